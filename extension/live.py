"""What the dashboard keeps per cluster between requests, refreshed through incremental cursors.

One ``ClusterState`` per cluster in the server process: a ``GraphModel`` of every task the GCS
keeps, advanced with ``ListTaskChanges(cursor)`` (only what changed since the last read,
however many tasks the cluster holds), a log of which tasks each read changed and which are
unfinished (what the timeline's cursor and the task stream read instead of every task), the
GCS's other tables as last read (``cached``), and the object store's usage per node (the
history the objects page draws, sampled from the server's start by ``data.sample_stores``,
bounded). Every open page and every viewer share it. Only the first request waits for the GCS;
later ones are answered from the state while the next read runs in the background, at most
every ``MIN_REFRESH_S``.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections import deque
from typing import Any

from cellfleet import _messages as m
from cellfleet.widgets.model import DONE_STATES, GraphModel, was_cancelled

from .discovery import ClusterInfo

__all__ = ["ClusterState", "state_of"]

MAX_CHANGES = 100_000  # per refresh (the GCS keeps 100,000 tasks)
MIN_REFRESH_S = 0.5  # pages poll once a second: a fresher model would cost more than it shows
STALE_S = 1.0  # GCS answers older than this are read again, in the background (see cached)
TIMELINE_S = 600  # the longest window the pages ask spans for (the timeline page's)
MAX_UNFINISHED = 10_000  # unfinished tasks remembered for the task stream
MAX_VIEWS = 8  # graph views kept (per model version and opened groups)
HISTORY = 3600  # store usage samples kept per node
MAX_CLUSTERS = 32
MAX_SPANS = 5000  # timeline spans per answer
CHANGE_LOG = 600  # refreshes remembered: which tasks each one changed (the timeline's cursor)
# How much later than a task submitted after it a task's record can reach the views: an owner
# keeps a young task's events back up to 0.25 s and flushes every 0.1 s, the GCS publishes
# changes every second (core/events.py, gcs/server.py).
ARRIVAL_SPREAD_S = 2.0


class ClusterState:
    """A cluster's tasks and store history as the pages show them."""

    def __init__(self, cluster_id: str) -> None:
        self.cluster_id = cluster_id
        self.model = GraphModel("all", max_nodes=300)
        self.cursor = 0
        self.refreshed = 0.0
        self.usage: dict[str, deque] = {}  # node id -> (time, used bytes)
        self.lock = asyncio.Lock()
        self.last_changes = 0  # records read by the last refresh
        # per refresh: the cursor, the time, the tasks it changed (the timeline's cursor)
        self.changed: deque[tuple[int, float, list[str]]] = deque(maxlen=CHANGE_LOG)
        self.unfinished: dict[str, None] = {}  # tasks seen not ended yet (bounded)
        self.log_start = float("inf")
        self.owned: tuple[float, list[dict] | None] = (0.0, None)  # the kernels' objects
        self.owned_refreshing = False
        self._background: asyncio.Future | None = None
        self._answers: dict[str, tuple[float, Any]] = {}  # GCS answers, see cached()
        self._fetching: set[str] = set()
        self._views: dict[tuple, dict] = {}
        self.loop = asyncio.get_running_loop()

    async def refresh(self, ask: Any) -> None:
        """Bring the model up to date in the background: only the first request waits for
        the GCS (the whole table, once); later ones are answered from the model as it is
        while the next read runs, and their pages see its changes on their next poll."""
        if not self.refreshed:
            await self.read_changes(ask)
        elif self._background is None or self._background.done():
            self._background = asyncio.ensure_future(self.read_changes(ask))
            self._background.add_done_callback(_ignore_failure)

    async def cached(self, key: str, fetch: Any) -> Any:
        """``await fetch()``'s answer, kept ``STALE_S``: an older one is served while the next
        is read in the background (the GCS round trip stays off the request's path)."""
        held = self._answers.get(key)
        now = time.monotonic()
        if held is None or now - held[0] > 10 * STALE_S:
            value = await fetch()
            self._answers[key] = (time.monotonic(), value)
            return value
        if now - held[0] > STALE_S and key not in self._fetching:
            self._fetching.add(key)

            async def again() -> None:
                try:
                    self._answers[key] = (time.monotonic(), await fetch())
                except (ConnectionError, OSError, asyncio.TimeoutError):
                    pass  # the held answer stays; the next request tries again
                finally:
                    self._fetching.discard(key)

            asyncio.ensure_future(again())
        return held[1]

    def view(self, expanded: set[str]) -> dict[str, Any]:
        """The model's view, computed once per model version and set of opened groups."""
        key = (self.model.version, frozenset(expanded))
        held = self._views.get(key)
        if held is None:
            held = self._views[key] = self.model.view(expanded)
            while len(self._views) > MAX_VIEWS:
                del self._views[next(iter(self._views))]
        return held

    async def read_changes(self, ask: Any) -> None:
        """Read what changed since the cursor (``ask(*messages)`` answers GCS requests)."""
        async with self.lock:
            now = time.monotonic()
            if now - self.refreshed < MIN_REFRESH_S:
                return
            (changes,) = await ask(m.ListTaskChanges(self.cursor, MAX_CHANGES))
            if changes["cursor"] < self.cursor:  # a new GCS (restarted without storage)
                self.model = GraphModel("all", max_nodes=300)
                self.changed.clear()
                self.unfinished.clear()
                (changes,) = await ask(m.ListTaskChanges(0, MAX_CHANGES))
            first = not self.cursor
            self.model.add_records(changes["tasks"])
            self.cursor = changes["cursor"]
            wall = time.time()
            if first:
                self.log_start = wall - TIMELINE_S  # the change log holds what ended since
            ids = [r["task_id"] for r in changes["tasks"]
                   # the first read holds the whole table: only its recent tasks count as new
                   if not first or max((r.get("events") or {}).values(), default=0)
                   >= wall - TIMELINE_S]
            if ids:
                self.changed.append((self.cursor, wall, ids))
            unfinished = self.unfinished
            for record in changes["tasks"]:
                if record["state"] in DONE_STATES:
                    unfinished.pop(record["task_id"], None)
                elif len(unfinished) < MAX_UNFINISHED:
                    unfinished[record["task_id"]] = None
            self.last_changes = len(changes["tasks"])
            self.refreshed = now

    def sample_usage(self, nodes: list[dict]) -> None:
        now = time.time()
        for node in nodes:
            history = self.usage.setdefault(node["node_id"], deque(maxlen=HISTORY))
            if not history or now - history[-1][0] >= 1.0:
                history.append((now, node["used"]))

    def pending_calls(self) -> dict[str, int]:
        """Actor id -> calls submitted and not ended (read from the unfinished tasks)."""
        out: dict[str, int] = {}
        records = self.model.records
        for tid in self.unfinished:
            record = records.get(tid)
            if record is not None and record.get("type") == "ACTOR_TASK" and \
                    record["state"] not in DONE_STATES:
                actor = record.get("actor_id") or ""
                out[actor] = out.get(actor, 0) + 1
        return out

    def recent(self, limit: int = 12) -> list[dict[str, Any]]:
        """The newest tasks submitted: function, state, node, worker, attempt, placement reason,
        duration. Records arrive out of submission order (an owner sends a task that ended at
        once before older ones still running), by ``ARRIVAL_SPREAD_S`` at most: the records
        that arrived last are read until one was submitted that long before the newest
        ``limit``."""
        newest: list[tuple[float, int, dict]] = []  # a heap of the newest `limit` so far
        for order, record in enumerate(reversed(self.model.records.values())):
            if "name" not in record:
                continue
            submitted = _submitted_at(record)
            if submitted is None:  # no time known (its first events were dropped): oldest
                submitted = -math.inf
            elif len(newest) == limit and submitted < newest[0][0] - ARRIVAL_SPREAD_S:
                break
            entry = (submitted, -order, record)
            if len(newest) < limit:
                heapq.heappush(newest, entry)
            elif entry > newest[0]:
                heapq.heapreplace(newest, entry)
        return [self._recent_row(record) for *_, record in sorted(newest, reverse=True)]

    def _recent_row(self, record: dict[str, Any]) -> dict[str, Any]:
        start, end = record.get("start_time"), record.get("end_time")
        return {
            "task_id": record["task_id"], "name": record["name"], "state": record["state"],
            "cancelled": was_cancelled(record), "node": record.get("node_id"),
            "pid": record.get("worker_pid"), "attempt": record.get("attempt_number") or 0,
            "duration": end - start if start and end else None, "tag": record.get("tag"),
            "cell": self.model.cell_labels.get(record.get("tag") or ""),
            "owner": record.get("owner"), "placement": record.get("placement_reason"),
        }

    def spans(self, since: float, limit: int = MAX_SPANS, cursor: int = 0) -> dict[str, Any]:
        """Timeline spans of the newest ``limit`` tasks that ran, ending after ``since``; with
        the ``cursor`` of an earlier answer, only those of the tasks changed after it."""
        records = self.model.records
        changed = self.changed
        if cursor and changed and changed[0][0] <= cursor:
            ids = dict.fromkeys(tid for seq, _, tids in changed if seq > cursor for tid in tids)
            candidates: Any = (records[t] for t in reversed(ids) if t in records)
        elif changed and since >= (changed[0][1] if len(changed) == CHANGE_LOG
                                   else self.log_start):
            # every task that ended after ``since`` still runs or changed since then: read
            # those, newest first, only as far as ``limit`` spans
            candidates = (records[t] for t in self._recent_ids(since) if t in records)
        else:
            candidates = reversed(records.values())
        out = []
        for record in candidates:
            start = record.get("start_time") or (record.get("events") or {}).get("RUNNING")
            if not start:
                continue
            end = record.get("end_time")
            if end is not None and end < since:
                continue
            out.append({
                "task_id": record["task_id"], "name": record.get("name", "?"),
                "state": record["state"], "start": start, "end": end,
                "worker": f"{(record.get('node_id') or '?')[:8]}:"
                          f"{record.get('worker_pid') or '?'}",
                "error": (record.get("error_message") or "")[:300] or None,
                "node": record.get("node_id"), "attempt": record.get("attempt_number") or 0,
                "cancelled": was_cancelled(record), "placement": record.get("placement_reason"),
                "fault": record.get("type") == "FAULT",  # a %chaos fault, drawn as one
            })
            if len(out) >= limit:
                break
        out.reverse()
        return {"spans": out, "cursor": self.cursor}


    def _recent_ids(self, since: float) -> Any:
        """Unfinished tasks, then those changed after ``since`` (newest first), once each."""
        seen = set(self.unfinished)
        yield from reversed(self.unfinished)
        for _, when, tids in reversed(self.changed):
            if when < since:
                return
            for tid in reversed(tids):
                if tid not in seen:
                    seen.add(tid)
                    yield tid


def _submitted_at(record: dict[str, Any]) -> float | None:
    """When a record's task was submitted, or its earliest known time."""
    times = record.get("events") or {}
    return times.get("PENDING_ARGS_AVAIL") or min(times.values(), default=None)


def _ignore_failure(future: asyncio.Future) -> None:
    """A background refresh that failed (the GCS away): the next request's refresh retries."""
    if not future.cancelled():
        future.exception()


_states: dict[str, ClusterState] = {}


def state_of(cluster: ClusterInfo) -> ClusterState:
    """The cluster's state in this server (called on its event loop; a state made on another
    loop, one a test closed, is made again)."""
    state = _states.get(cluster.id)
    if state is not None and state.loop is not asyncio.get_running_loop():
        del _states[cluster.id]
        state = None
    if state is None:
        if len(_states) >= MAX_CLUSTERS:
            del _states[next(iter(_states))]
        state = _states[cluster.id] = ClusterState(cluster.id)
    return state
