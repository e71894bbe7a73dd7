"""Task events, object events and worker output, buffered and sent to the GCS in batches.

Any thread may record; the core worker's I/O thread flushes every ``FLUSH_INTERVAL_S``, so
observability never adds a round trip to a task. While the GCS is away (restarting,
unreachable, or stalled with ``MAX_UNSENT_BYTES`` not yet taken from its connection) the
buffers keep at most ``max_size`` entries of each kind (Ray's ``task_events_max_buffer_size``):
the oldest are dropped and counted, and the counts travel with the next batch so that
``cellfleet status`` can show what was lost.

A batch carries one event per task (``coalesce``): a short task's owner sends its submission,
scheduling, push and end as one. The periodic flush keeps back the events of a task first
recorded less than ``YOUNG_S`` ago that has not ended, so a task that ends soon is sent once
(views refresh every second; a request to the GCS, such as the state API's, flushes them
all first). A worker leaves out the RUNNING event of a task that ended before the flush,
since the owner's FINISHED or FAILED event carries the same fields.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from .. import _messages as m
from .._graveyard import limit_from_env
from .._rpc import Connection
from .._task_states import TERMINAL_STATES, coalesce

__all__ = ["EventBuffer"]

FLUSH_INTERVAL_S = 0.1
MAX_BUFFERED = 10_000
MAX_BUFFERED_ENV = "CELLFLEET_EVENT_BUFFER_SIZE"
MAX_UNSENT_BYTES = 4 * 2**20  # queued for a GCS that does not read: hold further batches
YOUNG_S = 0.25  # a task's events wait this long for its end, to leave as one


class EventBuffer:
    """Thread-safe bounded queues of events and log lines for one core worker."""

    def __init__(self, max_size: int | None = None) -> None:
        size = max_size or max(1, limit_from_env(MAX_BUFFERED_ENV, MAX_BUFFERED))
        self.tasks: deque[list] = deque(maxlen=size)
        self.objects: deque[list] = deque(maxlen=size)
        self.logs: deque[list] = deque(maxlen=size)
        self._ended: deque[bytes] = deque(maxlen=size)  # tasks this worker ran and answered
        self._young: list[list] = []  # coalesced events kept back by the last flush
        self._max_young = size
        self.dropped = {"task_events": 0, "object_events": 0, "log_lines": 0}
        self._unreported = dict.fromkeys(self.dropped, 0)

    def _append(self, queue: deque, kind: str, item: list) -> None:
        if len(queue) == queue.maxlen:  # the append pushes the oldest out
            self.dropped[kind] += 1
            self._unreported[kind] += 1
        queue.append(item)

    def task(self, task_id: bytes, state: str, info: dict[str, Any] | None = None) -> None:
        self._append(self.tasks, "task_events", [task_id, state, time.time(), info])

    def object(self, object_id: bytes, state: str, info: dict[str, Any] | None = None) -> None:
        self._append(self.objects, "object_events", [object_id, state, info])

    def ended(self, task_id: bytes) -> None:
        """This worker sent ``task_id``'s result: its owner records how it ran."""
        self._ended.append(task_id)

    def log(self, line: list) -> None:
        self._append(self.logs, "log_lines", line)

    def flush(self, gcs: Connection | None, *, everything: bool = True) -> None:
        """Send what was recorded so far (called on the I/O thread); the periodic flush
        (``everything=False``) keeps back young tasks' events."""
        if gcs is None or not gcs.is_open or gcs.unsent_bytes > MAX_UNSENT_BYTES:
            return
        dropped = None
        if any(self._unreported.values()):
            dropped = {kind: n for kind, n in self._unreported.items() if n}
            for kind, n in dropped.items():
                self._unreported[kind] -= n
        ended = set(_drain(self._ended))
        tasks = []
        if self.tasks or self._young:
            young, self._young = self._young, []
            tasks = coalesce(young + [event for event in _drain(self.tasks)
                                      if event[1] != "RUNNING" or event[0] not in ended])
            if not everything:
                tasks = self._keep_young(tasks)
        if tasks or self.objects or dropped:
            gcs.send(m.AddEvents(tasks, _drain(self.objects), dropped))
        if self.logs:
            gcs.send(m.AddLogs(_drain(self.logs)))

    def _keep_young(self, events: list[list]) -> list[list]:
        """The events to send now; those of young tasks still under way wait (the newest
        ``max_size`` at most)."""
        since = time.time() - YOUNG_S
        send = []
        for event in events:
            times = event[2]  # a merged event's times are in the order they were recorded
            first = next(iter(times.values())) if type(times) is dict else times
            if event[1] in TERMINAL_STATES or first <= since:
                send.append(event)
            else:
                self._young.append(event)
        if len(self._young) > self._max_young:
            send += self._young[:-self._max_young]
            del self._young[:-self._max_young]
        return send


def _drain(queue: deque) -> list:
    out = []
    while queue:
        out.append(queue.popleft())
    return out
