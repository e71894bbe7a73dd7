"""Task events, object events and worker output, buffered and sent to the GCS in batches.

Any thread may record; the core worker's I/O thread flushes every ``FLUSH_INTERVAL_S``, so
observability never adds a round trip to a task.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from .. import _messages as m
from .._rpc import Connection

__all__ = ["EventBuffer"]

FLUSH_INTERVAL_S = 0.1


class EventBuffer:
    """Thread-safe queues of events and log lines for one core worker."""

    def __init__(self) -> None:
        self.tasks: deque[list] = deque()
        self.objects: deque[list] = deque()
        self.logs: deque[list] = deque()

    def task(self, task_id: bytes, state: str, info: dict[str, Any] | None = None) -> None:
        self.tasks.append([task_id, state, time.time(), info])

    def object(self, object_id: bytes, state: str, info: dict[str, Any] | None = None) -> None:
        self.objects.append([object_id, state, info])

    def log(self, line: list) -> None:
        self.logs.append(line)

    def flush(self, gcs: Connection | None) -> None:
        """Send everything recorded so far (called on the I/O thread)."""
        if gcs is None or not gcs.is_open:
            return
        if self.tasks or self.objects:
            gcs.send(m.AddEvents(_drain(self.tasks), _drain(self.objects)))
        if self.logs:
            gcs.send(m.AddLogs(_drain(self.logs)))


def _drain(queue: deque) -> list:
    out = []
    while queue:
        out.append(queue.popleft())
    return out
