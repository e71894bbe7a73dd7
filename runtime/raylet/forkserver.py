"""``python -m cellfleet.raylet.forkserver``: a worker template that forks workers on request.

Starting a worker as a new interpreter costs ~0.3 s of CPU, almost all of it importing the
runtime; a thousand actors created at once pay it a thousand times. The template imports the
worker runtime once, starts no thread and no event loop, and forks a worker per request (a few
milliseconds); the workers share the imported modules' memory until they write to it.

Protocol on a Unix stream socket shared with the raylet, one line each way per event::

    raylet -> template   ["<log path>", ["--worker-id", "...", ...]]   (JSON)
    template -> raylet   "pid <pid>"                                   one per request, in order
    template -> raylet   "exit <pid> <status>"                         when a worker it forked exits

The template exits when the raylet closes its end. A forked worker starts its own session,
writes to its log, and runs ``cellfleet.worker``'s ``main`` with the given arguments (its
lifeline is the raylet's pipe, inherited through the template).

The raylet forks its template (:func:`fork_template`) as soon as it has imported the modules
both share, before it imports its own: the template imports the worker runtime while the
raylet imports the rest, with no second interpreter to start, so a new node's first worker
is not held up by the raylet's start. Such a template gets the workers' lifeline with the
raylet's first request (``SCM_RIGHTS``) and passes it on as ``--lifeline-fd``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

from .._tuning import tune_process

PR_SET_PDEATHSIG = 1  # prctl(2)

__all__ = ["TemplateProcess", "fork_template", "serve"]


def _become_worker(log_path: str, argv: list[str], closing: list[int]) -> None:
    """In the forked child: detach, redirect output, run the worker; never returns."""
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in closing:
            os.close(fd)
        _output_to(log_path)
        from ..worker.__main__ import main

        sys.argv = ["cellfleet.worker", *argv]
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def _reap(conn: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn.sendall(f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())


def serve(conn: socket.socket) -> None:
    """Fork a worker per request line until the raylet closes ``conn``. A file descriptor
    sent along with a request (the first) is the workers' lifeline: each worker is told it
    (``--lifeline-fd``)."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select through wake_w
    buffer = b""
    lifeline: list[str] = []
    while True:
        ready, _, _ = select.select([conn, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap(conn)
        if conn not in ready:
            continue
        data, fds, _, _ = socket.recv_fds(conn, 65536, 1)
        if fds:
            lifeline = ["--lifeline-fd", str(fds[-1])]
        if not data:
            return
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            log_path, argv = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _become_worker(log_path, [*argv, *lifeline], [conn.fileno(), wake_r, wake_w])
            conn.sendall(f"pid {pid}\n".encode())


class TemplateProcess:
    """A template forked by this process: the part of ``Popen``'s interface the pool uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere
                self.returncode = -1
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Its exit code; ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("worker template", timeout)
            time.sleep(0.01)  # as Popen.wait polls a child with a timeout
        return self.returncode

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def fork_template(session_dir: Path) -> tuple[TemplateProcess, socket.socket]:
    """Fork the worker template from this process, which must have no thread and no event
    loop yet (the raylet, early in its start); returns it and this end of its control
    socket. OSError when the fork fails."""
    ours, theirs = socket.socketpair()
    raylet = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        raise
    if pid == 0:
        code = 1
        try:
            _die_with(raylet)
            ours.close()
            _detach(theirs.fileno(), session_dir / "logs" / "worker-template.log")
            _unbuffered()
            _set_command_line([sys.executable, "-m", "cellfleet.raylet.forkserver",
                               "--session-dir", str(session_dir)])
            _import_and_serve(theirs)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    theirs.close()
    return TemplateProcess(pid), ours


def _die_with(parent: int) -> None:
    """In the forked template: be killed when the raylet dies (``PR_SET_PDEATHSIG``), at
    once, even while still importing (it would otherwise notice only at its next read of the
    control socket). Its workers do not inherit this: they have their own lifeline."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl here: the control socket's end still ends it
        return
    if os.getppid() != parent:  # the raylet died before the request took effect
        os._exit(1)


def _detach(keep: int, log_path: Path) -> None:
    """In the forked template: a session of its own, none of the raylet's descriptors (its
    port, its session lock, its lifeline), output to the template's log."""
    os.setsid()
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    _output_to(log_path)


def _output_to(log_path: str | Path) -> None:
    """Stdout and stderr to ``log_path`` (appended), stdin from /dev/null."""
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    os.close(null)


def _unbuffered() -> None:
    """Output written at once, as with ``PYTHONUNBUFFERED=1`` (which a started template gets,
    and its workers and their children inherit): a worker's lines reach its log even when
    it is killed."""
    os.environ["PYTHONUNBUFFERED"] = "1"
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True,
                                  errors="backslashreplace")


def _set_command_line(argv: list[str]) -> None:
    """Show ``argv`` as this process's command line (``ps``, ``psutil``), as a template
    started as ``python -m cellfleet.raylet.forkserver`` shows it: a forked one would show
    the raylet's. Writes over the original arguments' memory (what ``setproctitle`` does);
    leaves them as they are where ``/proc`` or ``ctypes`` is missing."""
    try:
        import ctypes

        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
    except (OSError, ImportError, IndexError, ValueError):
        return
    data = "\0".join(argv).encode()[:max(end - start - 1, 0)]
    if start and end > start:
        ctypes.memmove(start, data.ljust(end - start, b"\0"), end - start)


def _import_and_serve(conn: socket.socket) -> None:
    import cellfleet.worker.__main__  # noqa: F401 - the import every forked worker shares

    tune_process(runtime=True)  # every worker inherits it
    serve(conn)


def main() -> None:
    parser = argparse.ArgumentParser(prog="cellfleet.raylet.forkserver")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--session-dir", required=True, help="named so tools find the process")
    parser.add_argument("--lifeline-fd", type=int, default=None, help="inherited by workers")
    args = parser.parse_args()
    import cellfleet.worker.__main__  # noqa: F401 - the import every forked worker shares

    tune_process(runtime=True)  # every worker inherits it
    serve(socket.socket(fileno=args.control_fd))


if __name__ == "__main__":
    main()
