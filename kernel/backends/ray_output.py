"""Task output on the Ray backend: captured in the worker, routed by task id to the cell.

Ray's own ``log_to_driver`` lines name a task's function and process but not the task, so a
notebook cannot tell which cell a line belongs to. Here every worker of the kernel's job (Ray's
``worker_process_setup_hook``) replaces its ``sys.stdout``/``sys.stderr`` with a stream that
still writes to Ray's log files and also sends each complete line, with the id of the task
running then, to the kernel's ``OutputSink`` actor. The kernel long-polls the sink
(``OutputSink.pull``: it answers when lines arrive, or after ``timeout``) and maps each task id
to the cell that submitted it; a line printed minutes later still finds its cell.

This module is imported by Ray's workers: it needs only the standard library and Ray.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections import deque
from typing import Any

__all__ = ["SINK_ENV", "LineBuffer", "OutputSink", "install"]

SINK_ENV = "CELLFLEET_OUTPUT_SINK"  # "namespace/actor name" of the kernel's sink
MAX_LINES = 20_000  # lines the sink holds for the kernel (older ones are dropped, counted)
MAX_LINE_CHARS = 20_000
BURST_LINES = 200  # lines a second a worker sends one by one; above, batches
BATCH_S = 0.05  # a batching worker's send interval
SEND_WAIT_S = 1.0  # the longest a print waits for the sink
# Lines Ray's worker writes for its log monitor at each task's start (not the task's output).
RAY_MARKERS = (":task_name:", ":actor_name:", ":job_id:", ":event_summary:", ":info_message:")


class OutputSink:
    """The kernel's mailbox for task lines (an async Ray actor, 0 CPUs, one per kernel).

    Lines are ``[task_id, name, pid, stream, text]``; ``seq`` numbers them from 1.
    """

    def __init__(self) -> None:
        self.lines: deque[tuple[int, list]] = deque(maxlen=MAX_LINES)
        self.seq = 0
        self.arrived = asyncio.Event()

    async def push(self, batch: list[list]) -> int:
        for line in batch:
            self.seq += 1
            self.lines.append((self.seq, line))
        self.arrived.set()
        return self.seq

    async def mark(self) -> int:
        """The sequence number of the newest line (the kernel's output barrier)."""
        return self.seq

    async def pull(self, cursor: int, timeout: float) -> tuple[int, list[list], int]:
        """Lines after ``cursor``, waiting up to ``timeout`` for one: ``(new cursor, lines,
        lines lost because the kernel fell more than MAX_LINES behind)``."""
        if self.seq <= cursor:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), timeout)
            except asyncio.TimeoutError:
                return cursor, [], 0
        out = [line for seq, line in self.lines if seq > cursor]
        first = self.lines[0][0] if self.lines else self.seq + 1
        lost = max(0, first - cursor - 1)
        return self.seq, out, lost


class LineBuffer:
    """A stream's partial line and the decision when to send (no I/O).

    ``write(text, now)`` returns the complete lines to send now: one by one while fewer than
    ``BURST_LINES`` were sent in the last second, else nothing until ``BATCH_S`` passed since
    the last send (``due(now)`` says when the flusher should send what is held).
    """

    def __init__(self) -> None:
        self.partial = ""
        self.held: list[str] = []
        self.window_start = 0.0
        self.sent_in_window = 0
        self.last_send = 0.0

    def write(self, text: str, now: float) -> list[str]:
        text = self.partial + text
        *complete, self.partial = text.split("\n")
        self.held.extend(line[:MAX_LINE_CHARS] for line in complete
                         if not line.startswith(RAY_MARKERS))
        if not self.held:
            return []
        if now - self.window_start >= 1.0:
            self.window_start, self.sent_in_window = now, 0
        if self.sent_in_window < BURST_LINES or now - self.last_send >= BATCH_S:
            return self.take(now)
        return []

    def due(self, now: float) -> bool:
        return bool(self.held) and now - self.last_send >= BATCH_S

    def take(self, now: float) -> list[str]:
        lines, self.held = self.held, []
        self.sent_in_window += len(lines)
        self.last_send = now
        return lines


class _Capture:
    """A worker's ``sys.stdout``/``sys.stderr``: Ray's log file as before, and the sink.

    A line sent as it is printed waits for the sink's answer (a second at most), so it is
    there before the task can return: the kernel's output barrier then shows it above the
    cell's result. Held lines (a flood) are sent by the flusher without waiting."""

    def __init__(self, original: Any, stream: str, send: Any) -> None:
        self.original = original
        self.stream = stream
        self.send = send
        self.buffer = LineBuffer()
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        written = self.original.write(text)
        with self.lock:
            lines = self.buffer.write(text, time.monotonic())
        if lines:
            self.send(self.stream, lines, True)
        return written if written is not None else len(text)

    def flush_held(self) -> None:
        with self.lock:
            lines = self.buffer.take(time.monotonic()) if self.buffer.held else []
        if lines:
            self.send(self.stream, lines, False)

    def due(self) -> bool:
        with self.lock:
            return self.buffer.due(time.monotonic())

    def flush(self) -> None:
        self.original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


def _task() -> tuple[str, str]:
    """The id and name of the task running on this thread ("" outside tasks)."""
    import ray

    context = ray.get_runtime_context()
    try:
        task_id = context.get_task_id() or ""
        name = context.get_task_name() or ""
    except Exception:  # noqa: BLE001 - a thread the task did not start
        return "", ""
    if context.get_actor_id() and not name:
        name = context.get_actor_name() or ""
    return task_id, name


def install() -> None:
    """Ray's ``worker_process_setup_hook`` for the kernel's job: capture this worker's
    output for the sink named in ``$CELLFLEET_OUTPUT_SINK`` (idempotent)."""
    import ray

    target = os.environ.get(SINK_ENV)
    if not target or isinstance(sys.stdout, _Capture):
        return
    namespace, _, name = target.partition("/")
    state: dict[str, Any] = {"sink": None}
    pid = os.getpid()

    def send(stream: str, lines: list[str], wait: bool) -> None:
        task_id, task_name = _task()
        batch = [[task_id, task_name, pid, stream, line] for line in lines]
        try:
            if state["sink"] is None:
                state["sink"] = ray.get_actor(name, namespace=namespace)
            pushed = state["sink"].push.remote(batch)
            if wait:
                ray.wait([pushed], timeout=SEND_WAIT_S, fetch_local=False)
        except Exception:  # noqa: BLE001 - the kernel has gone: Ray's log file keeps them
            state["sink"] = None

    captures = [_Capture(sys.stdout, "stdout", send), _Capture(sys.stderr, "stderr", send)]
    sys.stdout, sys.stderr = captures

    def flusher() -> None:
        while True:
            time.sleep(BATCH_S)  # the batching interval, not synchronization
            for capture in captures:
                if capture.due():
                    capture.flush_held()

    threading.Thread(target=flusher, name="cellfleet-output", daemon=True).start()
