"""The task graph as the widget and the dashboard draw it: records in, a bounded view out.

``GraphModel`` is fed task events (the GCS's raw ``[task_id, state, time, info]`` batches, or
the merged records ``ListTaskChanges`` returns) and keeps, incrementally, the records of the
tasks in its scope, the producer of every object, and per-function counts. Fed the GCS's group
counts too (``add_groups``: what the ``tasks`` channel pushes beside a bounded sample of the
changed records), it takes its counts from them and keeps only the newest records of each
group, so its work per second is bounded whatever the task rate. ``view()`` turns
that into what a frontend lays out: every task as a node while there are few, otherwise one
group node per function ("stage1 × 60 · 58 done · 2 running") that expands on request, edges
task → task through the objects they pass (aggregated between groups), actors as boxes around
their method calls, and a legend. No I/O: the feed and the widget carry the events in and the
view out.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from itertools import islice
from typing import Any

from cellfleet.gcs.task_events import TASK_STATES as STATES

__all__ = [
    "COLORS", "DONE_STATES", "SHORT", "STATES", "GraphModel", "cancelled_error", "state_at",
    "was_cancelled",
]

COLORS = {  # as in static/taskgraph.js
    "PENDING_ARGS_AVAIL": "#8c8c8c",
    "PENDING_NODE_ASSIGNMENT": "#e0a800",
    "SUBMITTED_TO_WORKER": "#f0700a",
    "RUNNING": "#1c7ed6",
    "FINISHED": "#2f9e44",
    "FAILED": "#e03131",
}
DONE_STATES = ("FINISHED", "FAILED")
_RANK = {state: i for i, state in enumerate(STATES)}
SHORT = {
    "PENDING_ARGS_AVAIL": "waiting",
    "PENDING_NODE_ASSIGNMENT": "queued",
    "SUBMITTED_TO_WORKER": "submitted",
    "RUNNING": "running",
    "FINISHED": "done",
    "FAILED": "failed",
}
MAX_ERROR_CHARS = 4000
# A collapsed group's edges are drawn from its newest members only (their count on an edge is
# that sample's): the view costs the same at 100,000 tasks as at 1,000.
EDGE_SAMPLE = 500
REPLAY_SAMPLE = 200  # members of a collapsed group whose state times the view carries
SCOPES = ("notebook", "cell", "all")


def state_at(record: dict, t: float) -> str | None:
    """The state a task was in at time ``t`` (None: not submitted yet)."""
    best = None
    for state, ts in (record.get("events") or {}).items():
        if ts <= t and (best is None or _RANK.get(state, 0) >= _RANK.get(best, 0)):
            best = state
    return best


def _short_id(hex_id: str | None) -> str:
    return (hex_id or "")[:8]


class GraphModel:
    """Task records in one scope and their bounded view.

    ``scope``: ``"all"`` tasks of the cluster, the ``"notebook"``'s (``job_id``), or one
    ``"cell"``'s (``tag``, the cell's msg_id, which nested tasks inherit). ``max_nodes``:
    above this many tasks the view groups them by function. ``max_tasks`` bounds the records
    kept (the oldest go first).
    """

    def __init__(self, scope: str = "all", *, job_id: int | None = None, tag: str | None = None,
                 max_nodes: int = 300, expand_limit: int = 200,
                 max_tasks: int = 200_000) -> None:
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        if scope == "cell" and not tag:
            raise ValueError("scope='cell' needs the cell's tag (its msg_id)")
        if scope == "notebook" and job_id is None:
            raise ValueError("scope='notebook' needs the notebook's job_id")
        self.scope = scope
        self.job_id = job_id
        self.tag = tag
        self.max_nodes = max_nodes
        self.expand_limit = expand_limit
        self.max_tasks = max_tasks
        self.records: OrderedDict[str, dict] = OrderedDict()  # every task seen, bounded
        self.members: dict[str, OrderedDict[str, None]] = {}  # group key -> in-scope tasks
        self.counts: dict[str, Counter] = {}  # group key -> state counts
        self.producer: dict[str, str] = {}  # object id -> task id
        self._ignored: OrderedDict[str, None] = OrderedDict()  # known to be out of scope
        self.cell_labels: dict[str, str] = {}  # tag -> "In [3]"
        self.version = 0  # bumped on every change: the view is stale when it moved
        self.counted = False  # counts come from the GCS's groups (add_groups), not records
        self._groups: dict[tuple, tuple[int, dict]] = {}  # (job, tag, name) -> (seq, counts)
        self.t0: float | None = None
        self.t1: float | None = None

    # -- input ------------------------------------------------------------------------------

    def add_events(self, events: list) -> None:
        """Raw task events ``[task_id (bytes or hex), state, time, info]``."""
        for task_id, state, ts, info in events:
            tid = task_id.hex() if isinstance(task_id, bytes) else task_id
            self._merge(tid, state, {state: ts}, info)

    def add_groups(self, groups: list, cursor: int) -> None:
        """The GCS's counts ``[job_id, tag, name, {state: n}]`` as of sequence ``cursor``
        (an older answer than the one a group holds is ignored)."""
        touched = set()
        for job, tag, name, counts in groups:
            if name is None or (self.scope == "cell" and tag != self.tag) or \
                    (self.scope == "notebook" and job != self.job_id):
                continue
            key = (job, tag, name)
            held = self._groups.get(key)
            if held is not None and held[0] > cursor:
                continue
            if counts:
                self._groups[key] = (cursor, counts)
            else:
                self._groups.pop(key, None)
            touched.add(name)
        if not self.counted:
            self.counted = True
            self.counts.clear()
            touched.update(k for *_, k in self._groups)
        for name in touched:
            total: Counter = Counter()
            for (_, _, other), (_, counts) in self._groups.items():
                if other == name:
                    total.update(counts)
            self.counts[name] = total
            self.members.setdefault(name, OrderedDict())
        self._trim()
        self.version += 1

    def _trim(self) -> None:
        """Counted: keep only the newest ``max(max_nodes, expand_limit)`` records per group."""
        keep = max(self.max_nodes, self.expand_limit)
        for members in self.members.values():
            while len(members) > keep:
                tid = next(iter(members))
                record = self.records.pop(tid, None)
                if record is not None:
                    self._drop(tid, record)
                members.pop(tid, None)

    def add_records(self, records: list[dict]) -> None:
        """Merged records (``ListTaskChanges``, the ``tasks`` channel): every field, every
        state's timestamp, the furthest state (a copy is kept; the events are merged)."""
        for incoming in records:
            tid = incoming["task_id"]
            if tid in self._ignored:
                continue
            events = incoming.get("events") or {}
            record = self.records.get(tid)
            if record is None:
                before = None
                record = self.records[tid] = _compact(incoming)
                record["events"] = dict(events)
                if len(self.records) > self.max_tasks:
                    self._drop(*self.records.popitem(last=False))
            else:
                before = self._slot(record)
                kept, state = record["events"], record["state"]
                record.update(_compact(incoming))
                kept.update(events)
                record["events"] = kept
                if _RANK.get(state, 0) > _RANK.get(record["state"], 0):
                    record["state"] = state
            if events:
                low, high = min(events.values()), max(events.values())
                self.t0 = low if self.t0 is None or low < self.t0 else self.t0
                self.t1 = high if self.t1 is None or high > self.t1 else self.t1
            for oid in incoming.get("returns") or ():
                self.producer[oid] = tid
            self._account(tid, record, before)

    def _merge(self, tid: str, state: str, events: dict, info: dict | None) -> None:
        if tid in self._ignored:
            return
        record = self.records.get(tid)
        if record is None:
            record = self.records[tid] = {"task_id": tid, "state": state, "events": {}}
            before = None
            if len(self.records) > self.max_tasks:
                self._drop(*self.records.popitem(last=False))
        else:
            before = self._slot(record)
        for st, ts in events.items():
            record["events"][st] = ts
            if _RANK.get(st, 0) >= _RANK.get(record["state"], 0):
                record["state"] = st
            self.t0 = ts if self.t0 is None else min(self.t0, ts)
            self.t1 = ts if self.t1 is None else max(self.t1, ts)
        if info:
            record.update(info)
            for oid in info.get("returns") or ():
                self.producer[oid] = tid
        self._account(tid, record, before)

    def _account(self, tid: str, record: dict, before: tuple[str | None, str] | None) -> None:
        """Move a changed record between the groups' members and counts."""
        after = self._slot(record)
        if after[0] is None and "name" in record:  # submitted from elsewhere: forget it
            self._forget(tid, record, before)
            return
        if after != before:
            counted = self.counted
            if before is not None and before[0] is not None:
                if not counted:
                    self.counts[before[0]][before[1]] -= 1
                if before[0] != after[0]:
                    self.members[before[0]].pop(tid, None)
            if after[0] is not None:
                if not counted:
                    self.counts.setdefault(after[0], Counter())[after[1]] += 1
                members = self.members.setdefault(after[0], OrderedDict())
                members[tid] = None
                if counted and len(members) > max(self.max_nodes, self.expand_limit):
                    self._trim()
        self.version += 1

    def _forget(self, tid: str, record: dict, slot: tuple[str | None, str] | None) -> None:
        del self.records[tid]
        if slot is not None and slot[0] is not None:
            if not self.counted:
                self.counts[slot[0]][slot[1]] -= 1
            self.members[slot[0]].pop(tid, None)
        for oid in record.get("returns") or ():
            if self.producer.get(oid) == tid:
                del self.producer[oid]
        self._ignored[tid] = None
        if len(self._ignored) > self.max_tasks:
            self._ignored.popitem(last=False)

    def _drop(self, tid: str, record: dict) -> None:
        key, state = self._slot(record)
        if key is not None:
            if not self.counted:
                self.counts[key][state] -= 1
            self.members[key].pop(tid, None)
        for oid in record.get("returns") or ():
            if self.producer.get(oid) == tid:
                del self.producer[oid]

    def in_scope(self, record: dict) -> bool:
        if "name" not in record:  # only the worker's events so far: who submitted it is unknown
            return False
        if self.scope == "cell":
            return record.get("tag") == self.tag
        if self.scope == "notebook":
            return record.get("job_id") == self.job_id
        return True

    def _slot(self, record: dict) -> tuple[str | None, str]:
        key = group_key(record) if self.in_scope(record) else None
        return key, record["state"]

    # -- queries ----------------------------------------------------------------------------

    def total(self) -> int:
        if self.counted:
            return sum(sum(c.values()) for c in self.counts.values())
        return sum(len(m) for m in self.members.values())

    def group_size(self, key: str) -> int:
        """The tasks of one group (counted: all the GCS counts, not only those held)."""
        if self.counted:
            return sum((self.counts.get(key) or {}).values())
        return len(self.members.get(key) or ())

    def legend(self) -> dict[str, int]:
        out: Counter = Counter()
        for counts in self.counts.values():
            out.update(counts)
        return {state: out[state] for state in STATES if out[state] > 0}

    def upstream(self, tid: str, limit: int = 10_000) -> tuple[set[str], set[str]]:
        """The lineage of a task: the tasks and objects it depends on, transitively."""
        tasks: set[str] = set()
        objects: set[str] = set()
        stack = [tid]
        while stack and len(tasks) < limit:
            record = self.records.get(stack.pop())
            if record is None:
                continue
            for oid in record.get("args") or ():
                objects.add(oid)
                producer = self.producer.get(oid)
                if producer is not None and producer not in tasks:
                    tasks.add(producer)
                    stack.append(producer)
        return tasks, objects

    def object_size(self, oid: str) -> int | None:
        """The bytes of a task's return, as its owner reported them when the task ended."""
        record = self.records.get(self.producer.get(oid) or "")
        sizes = record.get("return_sizes") if record else None
        try:
            return sizes[int(oid[32:], 16) - 1] if sizes else None
        except (IndexError, ValueError):
            return None

    def replay(self, t: float) -> dict[str, int]:
        """State counts of the scope's tasks as they were at time ``t``."""
        out: Counter = Counter()
        for members in self.members.values():
            for tid in members:
                state = state_at(self.records[tid], t)
                if state is not None:
                    out[state] += 1
        return dict(out)

    # -- the view ---------------------------------------------------------------------------

    def view(self, expanded: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """What a frontend draws: nodes, edges, actors, legend (bounded by ``max_nodes``
        plus ``expand_limit`` per expanded group)."""
        total = self.total()
        grouped = total > self.max_nodes
        node_of: dict[str, str] = {}  # task id -> the node that shows it
        nodes: list[dict] = []
        actors: dict[str, dict] = {}
        for key, members in self.members.items():
            size = self.group_size(key)
            if not size:
                continue
            if not members:
                nodes.append(self._group_node(f"g:{key}", key, size))
                continue
            if not grouped or key in expanded:
                shown = list(members)[-self.expand_limit:] if grouped else list(members)
                for tid in shown:
                    record = self.records[tid]
                    node = self._task_node(record)
                    node_of[tid] = node["id"]
                    nodes.append(node)
                    if node.get("actor"):
                        actors.setdefault(node["actor"], {"id": node["actor"], "label": ""})
                hidden = max(0, size - len(shown))
                if hidden:
                    group_id = f"g:{key}:more"
                    older = list(islice(reversed(members), len(shown),
                                        len(shown) + EDGE_SAMPLE))
                    nodes.append(self._group_node(group_id, key, hidden, more=True,
                                                  sample=older))
                    for tid in older:
                        node_of[tid] = group_id
            else:
                group_id = f"g:{key}"
                newest = list(islice(reversed(members), EDGE_SAMPLE))
                nodes.append(self._group_node(group_id, key, size, sample=newest))
                for tid in newest:
                    node_of[tid] = group_id
        edges = self._edges(node_of)
        for node in nodes:
            if node["kind"] == "task" and node.get("type") == "ACTOR_CREATION_TASK":
                actor = actors.get(node.get("actor") or "")
                if actor is not None:
                    actor["label"] = node["fn"]
        for actor in actors.values():
            actor["label"] = actor["label"] or f"actor {_short_id(actor['id'])}"
        return {
            "scope": self.scope, "total": total, "grouped": grouped,
            "nodes": nodes, "edges": edges, "actors": list(actors.values()),
            "legend": self.legend(), "t0": self.t0, "t1": self.t1,
            "expanded": sorted(k for k in expanded if k in self.members),
        }

    def _edges(self, node_of: dict[str, str]) -> list[dict]:
        """Edges between shown nodes: data (an object from its producer to a consumer) and
        child (a task to the tasks it submitted); aggregated when they join groups."""
        agg: dict[tuple[str, str, str], dict] = {}
        for tid, target in node_of.items():
            record = self.records[tid]
            for oid in record.get("args") or ():
                producer = self.producer.get(oid)
                source = node_of.get(producer) if producer else None
                if source is None or source == target:
                    continue
                size = self.object_size(oid)
                edge = agg.get((source, target, "data"))
                if edge is None:
                    agg[(source, target, "data")] = {"s": source, "t": target, "kind": "data",
                                                     "n": 1, "obj": oid, "bytes": size}
                else:
                    edge["n"] += 1
                    if size is not None:
                        edge["bytes"] = (edge["bytes"] or 0) + size
            parent = node_of.get(record.get("parent_task_id") or "")
            if parent is not None and parent != target:
                key = (parent, target, "child")
                if key in agg:
                    agg[key]["n"] += 1
                else:
                    agg[key] = {"s": parent, "t": target, "kind": "child", "n": 1}
        return list(agg.values())

    def _task_node(self, record: dict) -> dict:
        start, end = record.get("start_time"), record.get("end_time")
        error = record.get("error_message")
        cancelled = was_cancelled(record)
        if cancelled:
            error = cancelled_error(record)
        elif error and len(error) > MAX_ERROR_CHARS:
            error = error[:MAX_ERROR_CHARS] + "\n… (cut)"
        tag = record.get("tag") or ""
        return {
            "id": record["task_id"], "kind": "task", "label": record.get("name", "?"),
            "fn": record.get("func_or_class_name") or record.get("name", "?"),
            "state": record["state"], "type": record.get("type"),
            "actor": record.get("actor_id") or None,
            "ev": record.get("events") or {},
            "args": list(record.get("args") or ()), "returns": list(record.get("returns") or ()),
            "arg_sizes": [self.object_size(oid) for oid in record.get("args") or ()],
            "return_sizes": list(record.get("return_sizes") or ()),
            "node": record.get("node_id"), "pid": record.get("worker_pid"),
            "duration": end - start if start and end else None,
            "error": error, "cancelled": cancelled,
            "attempt": record.get("attempt_number") or 0,
            "reason": record.get("placement_reason") or record.get("scheduling_reason"),
            "parent": record.get("parent_task_id"),
            "cell": self.cell_labels.get(tag) or (tag[:8] if tag else None),
        }

    def _replay(self, sample: list[str]) -> list[list[float | None]]:
        """Per member of ``sample`` (the newest ``REPLAY_SAMPLE``), the time it reached each
        state of ``STATES`` (None: never), relative to ``t0`` and in ms: what the slider
        replays inside a collapsed group (its counts at a moment are the sample's, scaled to
        the group's size)."""
        t0 = self.t0 or 0.0
        out = []
        for tid in sample[:REPLAY_SAMPLE]:
            events = self.records[tid].get("events") or {}
            out.append([round((events[st] - t0) * 1000, 1) if st in events else None
                        for st in STATES])
        return out

    def _group_node(self, node_id: str, key: str, count: int, *, more: bool = False,
                    sample: list[str] = ()) -> dict:
        counts = self.counts.get(key) or Counter()
        states = {s: counts[s] for s in STATES if counts[s] > 0}
        main = max(states, key=lambda s: (states[s], _RANK[s])) if states else "FINISHED"
        if "FAILED" in states:
            main = "FAILED"
        elif "RUNNING" in states:
            main = "RUNNING"
        if more:
            label = f"{count} more {key}"
        else:
            parts = " · ".join(f"{n} {SHORT[s]}" for s, n in states.items())
            label = f"{key} × {count} · {parts}"
        return {"id": node_id, "kind": "more" if more else "group", "label": label,
                "key": key, "count": count, "state": main, "states": states,
                "replay": self._replay(list(sample))}


# How a worker reports a task cancelled while it ran: the KeyboardInterrupt (or, in an async
# actor, the CancelledError) the cancel raised in it, which its owner turns into a
# TaskCancelledError; a call cancelled as it ended is reported as "cancelled".
_CANCEL_ERRORS = ("KeyboardInterrupt", "CancelledError", "TaskCancelledError")


def was_cancelled(record: dict) -> bool:
    """Whether a failed task's record is that of a cancelled task."""
    if record.get("state") != "FAILED":
        return False
    error = (record.get("error_message") or "").strip()
    return error == "cancelled" or error.split(":", 1)[0] in _CANCEL_ERRORS


def _compact(record: dict) -> dict:
    """A copy of a record whose lists are tuples: a record holding only tuples, numbers and
    strings is left alone by the garbage collector once it has seen it (a process keeping
    100,000 records would otherwise have its collections walk them all)."""
    return {k: tuple(v) if type(v) is list else v for k, v in record.items()}


def cancelled_error(record: dict) -> str:
    """What a cancelled task's error says in the views (the owner's ``get`` raises it)."""
    return f"TaskCancelledError: task {record['task_id']} was cancelled"


def group_key(record: dict) -> str:
    """The group a task joins: its function (an actor's methods: ``Class.method``)."""
    return record.get("name") or record.get("func_or_class_name") or "?"
