"""The GCS's bounded store of task and object events: the live task graph.

Core workers send events in batches. A task event is ``[task_id, state, time, info]`` where
``info`` is a dict of fields that state adds (name, parent, arguments, node, worker, error...)
and ``time`` is ``{state: time}`` for an event that merged several (``_task_states.coalesce``).
Events of one task may arrive out of order (the worker's RUNNING after the owner's FINISHED);
the record keeps the furthest state and every timestamp. Beyond ``max_tasks`` the oldest
records are dropped and counted (objects alike, beyond ``max_objects``).

Every change gets the next sequence number, so a viewer asks only for what changed since its
cursor (``changes_since``) and state counts per group (job, cell tag, function) are kept as
events arrive (``summarize``, ``groups``): neither scans the whole table. ``view_update`` is
what the ``tasks`` channel pushes to live views: the counts of the groups that changed and a
bounded sample of the changed records, so a view's work does not grow with the task rate.
"""

from __future__ import annotations

import sys
from collections import Counter, OrderedDict
from typing import Any

from .._task_states import RANK as _RANK
from .._task_states import TASK_STATES
from .._task_states import TERMINAL_STATES as _TERMINAL

__all__ = ["TASK_STATES", "TaskEventStore"]

_SHARED_VALUES_MAX = 1000
SAMPLE_PER_JOB = 300  # changed records a view update carries per job (newest first)
MAX_SENT_OPEN = 10_000  # tasks pushed while unfinished, whose next change is always pushed


def _compact(info: dict[str, Any], shared: dict[tuple, dict]) -> dict[str, Any]:
    """``info`` with its keys and short strings interned and small dicts (resource shapes)
    shared between records: a record then costs about 1.4 KB, not 2.3 KB."""
    out = {}
    for key, value in info.items():
        if type(value) is str and len(value) <= 64:
            value = sys.intern(value)
        elif type(value) is dict and len(value) <= 8:
            try:
                shape = tuple(value.items())
                if shape in shared or len(shared) < _SHARED_VALUES_MAX:
                    value = shared.setdefault(shape, value)
            except TypeError:  # unhashable values: keep this dict as it is
                pass
        out[sys.intern(key)] = value
    return out


class TaskEventStore:
    """Merges task and object events into records, oldest dropped first."""

    def __init__(self, max_tasks: int = 100_000, max_objects: int = 100_000) -> None:
        self.tasks: OrderedDict[bytes, dict[str, Any]] = OrderedDict()
        self.objects: OrderedDict[bytes, dict[str, Any]] = OrderedDict()
        self._max_tasks = max_tasks
        self._max_objects = max_objects
        self.dropped_tasks = 0
        self.dropped_objects = 0
        self._shared: dict[tuple, dict] = {}
        self.seq = 0
        self._changed: OrderedDict[bytes, int] = OrderedDict()  # task_id -> seq, oldest first
        # (job_id, tag, name) -> state counts; a key lives while one of its tasks is kept
        self._groups: dict[tuple, Counter] = {}
        self._groups_changed: dict[tuple, int] = {}  # since the last view update: key -> seq
        self._sent_open: OrderedDict[bytes, None] = OrderedDict()

    def add_task_events(self, events: list) -> None:
        tasks, changed = self.tasks, self._changed
        for task_id, state, ts, info in events:
            record = tasks.get(task_id)
            if record is None:
                record = tasks[task_id] = {
                    "task_id": task_id.hex(),
                    "state": state,
                    "events": {},
                }
                before = None
                if len(tasks) > self._max_tasks:
                    old_id, old = tasks.popitem(last=False)
                    changed.pop(old_id, None)
                    self._sent_open.pop(old_id, None)
                    self._count(_slot(old), -1)
                    self.dropped_tasks += 1
            else:
                before = _slot(record)
                if _RANK.get(state, 0) >= _RANK.get(record["state"], 0):
                    record["state"] = state
            times = record["events"]
            if type(ts) is dict:
                for merged_state, merged_ts in ts.items():
                    times[sys.intern(merged_state)] = merged_ts
            else:
                times[sys.intern(state)] = ts
            if info:
                record.update(_compact(info, self._shared))
            after = _slot(record)
            if after != before:
                if before is not None:
                    self._count(before, -1)
                self._count(after, 1)
            self.seq += 1
            changed[task_id] = self.seq
            changed.move_to_end(task_id)

    def _count(self, slot: tuple, delta: int) -> None:
        key, state = slot[:3], slot[3]
        counts = self._groups.get(key)
        if counts is None:
            counts = self._groups[key] = Counter()
        counts[state] += delta
        if counts[state] <= 0:
            del counts[state]
            if not counts:
                del self._groups[key]
        changed = self._groups_changed
        changed[key] = self.seq + 1
        if len(changed) > self._max_tasks:  # nobody asked for updates for a long while
            del changed[next(iter(changed))]

    def add_object_events(self, events: list) -> None:
        """``[object_id, state, info]``: state is CREATED or FREED."""
        objects = self.objects
        for object_id, state, info in events:
            if state == "FREED":
                objects.pop(object_id, None)
                continue
            record = objects.setdefault(object_id, {"object_id": object_id.hex()})
            record.update(info)
            if len(objects) > self._max_objects:
                objects.popitem(last=False)
                self.dropped_objects += 1

    def list_tasks(self, filters: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        out = []
        for record in reversed(self.tasks.values()):
            if all(record.get(k) == v for k, v in filters.items()):
                out.append(record)
                if len(out) >= limit:
                    break
        out.reverse()
        return out

    def changes_since(self, cursor: int, limit: int) -> dict[str, Any]:
        """The records changed after sequence number ``cursor``, oldest first: at most the
        newest ``limit`` of them (``truncated`` says if more changed); pass ``cursor`` back."""
        out = []
        truncated = False
        for task_id, seq in reversed(self._changed.items()):
            if seq <= cursor:
                break
            if len(out) >= limit:
                truncated = True
                break
            out.append(self.tasks[task_id])
        out.reverse()
        return {"cursor": self.seq, "tasks": out, "truncated": truncated,
                "total_tasks": len(self.tasks), "dropped_tasks": self.dropped_tasks}

    def groups(self, filters: dict[str, Any]) -> dict[str, Any]:
        """``[job_id, tag, name, {state: n}]`` of every group matching ``filters`` (``job_id``,
        ``tag``), and the sequence number they are as of."""
        job, tag = filters.get("job_id"), filters.get("tag")
        return {"cursor": self.seq, "groups": [
            [*key, dict(counts)] for key, counts in self._groups.items()
            if (job is None or key[0] == job) and (tag is None or key[1] == tag)]}

    def view_update(self, cursor: int, per_job: int = SAMPLE_PER_JOB) -> dict[str, Any]:
        """What live views need of the changes after ``cursor``: the current counts of every
        group that changed, the newest ``per_job`` changed records of each job (failed ones
        with a budget of their own) and every changed record of a task an earlier update
        carried unfinished, so a record a view holds always reaches its end state."""
        tasks, sent_open = self.tasks, self._sent_open
        picked = []
        newest: Counter = Counter()
        failed: Counter = Counter()
        for task_id, seq in reversed(self._changed.items()):
            if seq <= cursor:
                break
            record = tasks[task_id]
            job = record.get("job_id")
            if task_id in sent_open:
                pass
            elif record["state"] == "FAILED" and failed[job] < per_job:
                failed[job] += 1
            elif newest[job] < per_job:
                newest[job] += 1
            else:
                continue
            picked.append(record)
            if record["state"] in _TERMINAL:
                sent_open.pop(task_id, None)
            else:
                sent_open[task_id] = None
        while len(sent_open) > MAX_SENT_OPEN:
            sent_open.popitem(last=False)
        picked.reverse()
        groups = [[*key, dict(self._groups.get(key) or {})]
                  for key, seq in self._groups_changed.items() if seq > cursor]
        self._groups_changed.clear()
        return {"cursor": self.seq, "groups": groups, "tasks": picked}

    def summarize(self) -> dict[str, Any]:
        summary: dict[str, Counter] = {}
        for (_, _, name), counts in self._groups.items():
            summary.setdefault(name or "?", Counter()).update(counts)
        return {
            "summary": {
                name: {"func_or_class_name": name, "state_counts": dict(counts)}
                for name, counts in summary.items()
            },
            "total_tasks": len(self.tasks),
            "dropped_tasks": self.dropped_tasks,
        }


def _slot(record: dict[str, Any]) -> tuple:
    """The group a record counts in, and its state."""
    return record.get("job_id"), record.get("tag"), record.get("name"), record["state"]
