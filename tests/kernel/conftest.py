"""Real cellfleet kernels for the tests: started from the installed kernelspec."""

from __future__ import annotations

import os
import queue
import re
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

KERNEL_NAME = "cellfleet"
START_TIMEOUT = 60












def _ensure_kernelspec() -> str:
    """The installed ``cellfleet`` spec; installed into a temporary prefix if missing (inside
    the run's CELLFLEET_TMPDIR, which the top conftest removes at the end)."""
    specs = KernelSpecManager().find_kernel_specs()
    if KERNEL_NAME in specs:
        return specs[KERNEL_NAME]
    from cellfleet.kernel.install import main

    prefix = tempfile.mkdtemp(prefix="kernelspec-", dir=os.environ["CELLFLEET_TMPDIR"])
    assert main(["install", "--prefix", prefix]) == 0
    path = os.path.join(prefix, "share", "jupyter")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        p for p in (path, os.environ.get("JUPYTER_PATH")) if p)
    return KernelSpecManager().find_kernel_specs()[KERNEL_NAME]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Cell:
    """The messages of one execute request (they keep arriving after it is done)."""

    def __init__(self, kernel: KernelProcess, msg_id: str, reply: dict) -> None:
        self.kernel = kernel
        self.msg_id = msg_id
        self.reply = reply

    @property
    def messages(self) -> list[dict]:
        return self.kernel.messages_of(self.msg_id)

    def stream(self, name: str = "stdout") -> str:
        return "".join(m["content"]["text"] for m in self.messages
                       if m["msg_type"] == "stream" and m["content"]["name"] == name)

    @property
    def stdout(self) -> str:
        return self.stream("stdout")

    @property
    def stderr(self) -> str:
        return self.stream("stderr")

    @property
    def result(self) -> str | None:
        for m in self.messages:
            if m["msg_type"] == "execute_result":
                return m["content"]["data"].get("text/plain")
        return None

    @property
    def error(self) -> dict | None:
        for m in self.messages:
            if m["msg_type"] == "error":
                return m["content"]
        return None

    @property
    def ok(self) -> bool:
        return self.reply["content"]["status"] == "ok"

    def traceback_text(self) -> str:
        """The traceback shown, without colors (IPython 8 colors each token of a line)."""
        err = self.error or {}
        return _ANSI.sub("", "\n".join(err.get("traceback", [])))


class KernelProcess:
    """A kernel started from the spec, with every iopub message filed by its parent."""

    def __init__(self, env: dict[str, str] | None = None,
                 kernel_name: str = KERNEL_NAME) -> None:
        self.km = KernelManager(kernel_name=kernel_name)
        full_env = dict(os.environ)
        full_env.setdefault("CELLFLEET_NUM_CPUS", "2")
        full_env.update(env or {})
        self.km.start_kernel(env=full_env)
        self._messages: dict[str, list[dict]] = defaultdict(list)
        self._cond = threading.Condition()
        self._connect()

    def _connect(self) -> None:
        self.kc = self.km.client()
        self.kc.start_channels()
        # wait_for_ready drains iopub itself: the reader (the only other user of that zmq
        # socket, which is not thread-safe) starts after it.
        self.kc.wait_for_ready(timeout=START_TIMEOUT)
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_iopub, args=(self.kc, self._stop),
                                        daemon=True)
        self._reader.start()

    def _disconnect(self) -> None:
        self._stop.set()
        self._reader.join(timeout=2)
        self.kc.stop_channels()

    def restart(self) -> None:
        """Restart the kernel (as the frontend's restart button does) and reconnect."""
        self._disconnect()
        self.km.restart_kernel(now=False)
        self._connect()

    @property
    def pid(self) -> int:
        return self.km.provisioner.pid

    def _read_iopub(self, kc: Any, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                msg = kc.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                continue
            except Exception:  # noqa: BLE001 - channels closed
                return
            parent = msg.get("parent_header", {}).get("msg_id", "")
            msg["arrived"] = time.monotonic()
            with self._cond:
                self._messages[parent].append(msg)
                self._cond.notify_all()

    def messages_of(self, msg_id: str) -> list[dict]:
        with self._cond:
            return list(self._messages.get(msg_id, []))

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30,
                 message: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
                self._cond.wait(min(left, 0.5))

    def submit(self, code: str, **kwargs: Any) -> str:
        return self.kc.execute(code, **kwargs)

    def reply(self, msg_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no execute_reply within {timeout}s")
            try:
                msg = self.kc.get_shell_msg(timeout=left)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                msg["arrived"] = time.monotonic()
                return msg

    def execute(self, code: str, timeout: float = 60, **kwargs: Any) -> Cell:
        """Run a cell; returns once it is done and its output is flushed (status idle)."""
        return self.finish(self.submit(code, **kwargs), timeout)

    def finish(self, msg_id: str, timeout: float = 60) -> Cell:
        """The submitted cell ``msg_id``, once it is done and its output is flushed."""
        reply = self.reply(msg_id, timeout)
        self.wait_for(lambda: any(m["msg_type"] == "status" and
                                  m["content"]["execution_state"] == "idle"
                                  for m in self._messages.get(msg_id, [])),
                      timeout=timeout, message="the cell's idle status")
        return Cell(self, msg_id, reply)

    def runtime_pids(self) -> set[int]:
        """The runtime processes started by this kernel (GCS, raylet, workers)."""
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return set()
        return {p.pid for p in children if _is_runtime(p)}

    def close(self, now: bool = False) -> None:
        try:
            self._disconnect()
        finally:
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=now)


def _is_runtime(proc: psutil.Process) -> bool:
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(f"-m cellfleet.{m}" in cmdline for m in ("gcs", "raylet", "worker"))




@pytest.fixture(scope="session")
def kernelspec_dir() -> str:
    return _ensure_kernelspec()


@pytest.fixture(scope="module")
def kernel(kernelspec_dir: str) -> Iterator[KernelProcess]:
    """One kernel shared by the tests of a module (runtime with 2 CPUs)."""
    k = KernelProcess()
    try:
        yield k
    finally:
        k.close()


@pytest.fixture
def new_kernel(kernelspec_dir: str) -> Iterator[Callable[..., KernelProcess]]:
    """Start kernels inside a test; all are shut down after it."""
    started: list[KernelProcess] = []

    def start(**kwargs: Any) -> KernelProcess:
        k = KernelProcess(**kwargs)
        started.append(k)
        return k

    yield start
    for k in started:
        try:
            k.close(now=True)
        except Exception:  # noqa: BLE001 - a killed kernel has nothing to close
            pass
