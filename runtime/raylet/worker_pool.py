"""The raylet's worker processes: started ahead of need, registered, reaped when they exit.

Workers are forked from a template process that has imported the runtime once
(:mod:`.forkserver`; the raylet forks it early in its start, else the pool starts one); when
the template is gone a worker starts as a new interpreter instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._process import LifelinePipe, spawn
from .._rpc import Connection
from .forkserver import TemplateProcess

__all__ = ["WorkerPool", "WorkerProcess"]

logger = logging.getLogger(__name__)


class ForkedProcess:
    """A worker forked by the template: the part of ``Popen``'s interface the pool uses.

    The template reaps it and reports its exit; a signal sent before its pid is known is
    delivered once it is.
    """

    __slots__ = ("pid", "returncode", "_signal")

    def __init__(self) -> None:
        self.pid: int | None = None
        self.returncode: int | None = None
        self._signal: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self) -> int | None:
        return self.returncode  # the exit arrives as the template's report

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            return
        if self.pid is None:
            self._signal = sig
            return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def forked(self, pid: int) -> None:
        self.pid = pid
        if self._signal is not None:
            self.send_signal(self._signal)


class WorkerTemplate:
    """The raylet's end of the template process that forks workers: ``forked`` by the
    raylet (``forkserver.fork_template``), else started here. The first request carries
    the workers' ``lifeline``."""

    def __init__(self, *, session_dir: Path, lifeline: LifelinePipe,
                 on_lost: Callable[[], None],
                 forked: tuple[TemplateProcess, socket.socket] | None = None) -> None:
        if forked is not None:
            self.process: subprocess.Popen | TemplateProcess = forked[0]
            ours = forked[1]
        else:
            ours, theirs = socket.socketpair()
            try:
                self.process = spawn(
                    "cellfleet.raylet.forkserver",
                    ["--control-fd", str(theirs.fileno()), "--session-dir", str(session_dir)],
                    lifeline=None, log_path=session_dir / "logs" / "worker-template.log",
                    pass_fds=(theirs.fileno(),), env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            finally:
                theirs.close()
        self._sock = ours  # blocking: a request is a short line, at most a few are unanswered
        self._lifeline: LifelinePipe | None = lifeline  # sent with the first request
        self._on_lost = on_lost
        self._awaiting_pid: deque[ForkedProcess] = deque()
        self._by_pid: dict[int, ForkedProcess] = {}
        self._buffer = b""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(ours.fileno(), self._readable)
        self.alive = True

    def fork(self, log_path: Path, argv: list[str]) -> ForkedProcess:
        """Ask for a worker; OSError when the template cannot take the request."""
        line = json.dumps([str(log_path), argv]).encode() + b"\n"
        if self._lifeline is not None:
            sent = socket.send_fds(self._sock, [line], [self._lifeline.read_fd])
            self._lifeline = None
            line = line[sent:]
        if line:
            self._sock.sendall(line)
        proc = ForkedProcess()
        self._awaiting_pid.append(proc)
        return proc

    def _readable(self) -> None:
        try:
            data = self._sock.recv(65536)  # readable: returns at once
        except OSError:
            data = b""
        if not data:
            logger.warning("the worker template exited with %s; starting workers as new "
                           "interpreters", self.process.poll())
            self.close()
            self._on_lost()
            return
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            kind, *values = line.decode().split()
            if kind == "pid":
                proc = self._awaiting_pid.popleft()
                proc.forked(int(values[0]))
                self._by_pid[proc.pid] = proc
            else:  # "exit <pid> <code>"
                proc = self._by_pid.pop(int(values[0]), None)
                if proc is not None:
                    proc.returncode = int(values[1])

    def close(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for proc in self._awaiting_pid:
            proc.returncode = -1  # never forked: a failed start
        self._awaiting_pid.clear()
        if self.process.poll() is None:
            self.process.terminate()


@dataclass(slots=True)
class WorkerProcess:
    worker_id: bytes
    process: subprocess.Popen | ForkedProcess
    conn: Connection | None = None
    address: str = ""


class WorkerPool:
    """Starts ``python -m cellfleet.worker`` processes tied to this raylet's life."""

    def __init__(self, *, raylet_address: str, gcs_address: str, node_id: bytes,
                 session_dir: Path, store_name: str,
                 template: tuple[TemplateProcess, socket.socket] | None = None) -> None:
        """``template``: the worker template the raylet forked, if it did."""
        self._args = [
            "--raylet-address", raylet_address,
            "--gcs-address", gcs_address,
            "--node-id", node_id.hex(),
            "--session-dir", str(session_dir),
            "--store-name", store_name,
        ]
        self._logs = session_dir / "logs"
        self._lifeline = LifelinePipe()
        self.workers: dict[bytes, WorkerProcess] = {}
        self._template: WorkerTemplate | None = None
        if template is not None or os.environ.get("CELLFLEET_WORKER_TEMPLATE", "1") != "0":
            try:
                self._template = WorkerTemplate(session_dir=session_dir,
                                                lifeline=self._lifeline,
                                                on_lost=self._template_lost, forked=template)
            except OSError as exc:
                logger.warning("no worker template (%s): workers start as new interpreters", exc)

    def start(self, worker_id: bytes) -> WorkerProcess:
        """Start the process of a worker that will register as ``worker_id``."""
        log_path = self._logs / f"worker-{worker_id.hex()[:12]}.log"
        args = [*self._args, "--worker-id", worker_id.hex()]
        proc: subprocess.Popen | ForkedProcess
        if self._template is not None and self._template.alive:
            proc = self._template.fork(log_path, args)
        else:
            proc = spawn("cellfleet.worker", args, lifeline=self._lifeline, log_path=log_path,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        worker = WorkerProcess(worker_id, proc)
        self.workers[worker_id] = worker
        return worker

    def registered(self, worker_id: bytes, conn: Connection, address: str) -> bool:
        worker = self.workers.get(worker_id)
        if worker is None:
            return False
        worker.conn = conn
        worker.address = address
        return True

    def remove(self, worker_id: bytes) -> WorkerProcess | None:
        return self.workers.pop(worker_id, None)

    def kill(self, worker_id: bytes) -> None:
        worker = self.workers.get(worker_id)
        if worker is not None and worker.process.poll() is None:
            worker.process.send_signal(signal.SIGKILL)

    def exited_unregistered(self) -> list[bytes]:
        """Workers that exited before registering (their connection never existed)."""
        if self._template is not None and not self._template.alive:
            self._template.process.poll()  # reap it: it may not have been a zombie yet at EOF
        exited = []
        for worker_id, worker in self.workers.items():
            if worker.conn is None and worker.process.poll() is not None:
                logger.warning("worker %s exited with %s before registering",
                               worker_id.hex()[:12], worker.process.returncode)
                exited.append(worker_id)
        return exited

    def _template_lost(self) -> None:
        """Forked workers that had not registered will never be reported: kill them, so their
        starts fail and are made again as new interpreters."""
        for worker in self.workers.values():
            if isinstance(worker.process, ForkedProcess) and worker.conn is None:
                worker.process.kill()
                worker.process.returncode = -1

    async def stop(self, timeout: float = 2.0) -> None:
        """Terminate every worker, then kill what is left after ``timeout``."""
        procs = [w.process for w in self.workers.values() if w.process.poll() is None]
        for p in procs:
            p.terminate()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(p.poll() is None for p in procs) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if self._template is not None:
            self._template.close()
            try:
                self._template.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._template.process.kill()
        self._lifeline.close()
