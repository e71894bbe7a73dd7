"""Routing task output to the cell that submitted the task.

The kernel sets ``submission_tag`` to each cell's msg_id while the cell runs, so every task
(and every task those tasks start) carries it, and every line the task prints comes back with
it. ``OutputRouter.handle`` is the core worker's ``log_handler``: it runs on the core worker's
I/O thread and publishes each batch of lines as ``stream`` messages whose parent is the
submitting cell's request, so they land under that cell even after others have run (ipykernel
would otherwise attribute output from other threads to the latest cell).

A cell whose tasks print more than ``rate_limit`` lines a second gets one notice and loses
the excess; the worker log files keep everything.

Lines and results travel different paths (lines: worker -> GCS -> this process; results:
worker -> this process), so a result can overtake what its task printed just before returning.
``hold_results_for_output`` makes a cell's result wait for that output (one GCS round trip,
bounded by the barrier's deadline), so a task's prints show above the value it returned.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["OutputRouter", "hold_results_for_output"]

MAX_CELLS = 10_000
MAX_LINE_CHARS = 20_000


class _Window:
    """One cell's line count in the current one-second window."""

    __slots__ = ("start", "count", "dropped", "flooding")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.dropped = 0  # since the flood began
        self.flooding = False


class OutputRouter:
    """Sends task output to its cell through the kernel's iopub channel."""

    def __init__(self, session: Any, iopub_socket: Any, *, rate_limit: int = 1000,
                 logs_hint: Callable[[], str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.session = session
        self.iopub_socket = iopub_socket
        self.rate_limit = rate_limit
        self.logs_hint = logs_hint
        self._clock = clock
        self._cells: OrderedDict[str, dict] = OrderedDict()  # msg_id -> {"header": ...}
        self._latest: dict = {}
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    # -- cells ----------------------------------------------------------------------------

    def register_cell(self, parent: dict, *, latest: bool = True) -> str:
        """Remember a cell's request header (called as the cell starts); returns its msg_id.

        ``latest``: untagged output goes to this cell from now on (not for silent requests).
        """
        header = parent.get("header") or {}
        msg_id = header.get("msg_id", "")
        entry = {"header": header}
        with self._lock:
            self._cells[msg_id] = entry
            self._cells.move_to_end(msg_id)
            while len(self._cells) > MAX_CELLS:
                self._cells.popitem(last=False)
            if latest:
                self._latest = entry
        return msg_id

    def parent_for(self, tag: str) -> dict:
        """The request a tag's output belongs to; untagged output goes to the latest cell."""
        with self._lock:
            return self._cells.get(tag) or self._latest

    # -- publishing -----------------------------------------------------------------------

    def write(self, tag: str, text: str, stream: str = "stdout") -> None:
        """Publish ``text`` (complete lines) as a stream message of the cell ``tag``."""
        if not text:
            return
        parent = self.parent_for(tag)
        try:
            self.session.send(self.iopub_socket, "stream", {"name": stream, "text": text},
                              parent=parent or None, ident=f"stream.{stream}".encode())
        except Exception:  # noqa: BLE001 - a closing kernel must not break the runtime
            pass

    def handle(self, lines: list) -> None:
        """The core worker's ``log_handler``: ``[job, tag, task, name, pid, stream, text]``."""
        chunks: dict[tuple[str, str], list[str]] = {}
        now = self._clock()
        for _job, tag, _task, name, pid, stream, text in lines:
            stream = "stderr" if stream == "stderr" else "stdout"
            admitted, notices = self._admit(tag, now)
            for notice in notices:
                chunks.setdefault((tag, "stderr"), []).append(notice)
            if not admitted:
                continue
            if len(text) > MAX_LINE_CHARS:
                text = text[:MAX_LINE_CHARS] + f"... [{len(text) - MAX_LINE_CHARS} characters cut]"
            chunks.setdefault((tag, stream), []).append(f"({name} pid={pid}) {text}\n")
        for (tag, stream), parts in chunks.items():
            self.write(tag, "".join(parts), stream)

    def _admit(self, tag: str, now: float) -> tuple[bool, list[str]]:
        """Count a line against its cell's window: (publish it?, notices to publish)."""
        notices = []
        window = self._windows.get(tag)
        if window is None:
            window = self._windows[tag] = _Window(now)
            if len(self._windows) > MAX_CELLS:
                del self._windows[next(iter(self._windows))]
        elif now - window.start >= 1.0:
            if window.flooding and window.count <= self.rate_limit:
                notices.append(f"[cellfleet] the flood is over: {window.dropped} line(s) "
                               "were dropped\n")
                window.flooding = False
                window.dropped = 0
            window.start = now
            window.count = 0
        window.count += 1
        if window.count <= self.rate_limit:
            return True, notices
        if not window.flooding:
            window.flooding = True
            hint = self.logs_hint() if self.logs_hint is not None else ""
            notices.append(
                f"[cellfleet] this cell's tasks print more than {self.rate_limit} lines a "
                "second: dropping lines until the flood stops"
                + (f" (the worker logs in {hint} keep every line)" if hint else "") + "\n"
            )
        window.dropped += 1
        return False, notices


def hold_results_for_output(shell: Any, barrier: Callable[[], None]) -> None:
    """Run ``barrier`` (wait until the output of finished tasks has been routed) before the
    shell displays a cell's result."""
    hook = shell.displayhook
    start = hook.start_displayhook

    def start_displayhook() -> None:
        barrier()
        start()

    hook.start_displayhook = start_displayhook
