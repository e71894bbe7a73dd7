"""The views' questions answered from a Ray cluster's state API, in cellfleet's GCS shapes.

The dashboard and the widget ask cellfleet's GCS (``GetNodes``, ``ListTasks``,
``ListTaskChanges``, ``ListTaskGroups``, ``SummarizeTasks``, ``ListActors``, ``ListObjects``).
``RayStateSource`` answers the same messages from Ray's state API (``ray.util.state``, served
by Ray's dashboard process) so the same view model draws a Ray cluster. ``RayTranslator``
turns Ray's records into cellfleet's and keeps the change cursor Ray does not have (no I/O).

What Ray does not expose is said on the pages (``LIMITS``).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

__all__ = ["LIMITS", "RayStateSource", "RayTranslator", "STATE_MAP"]

MAX_TASKS = 10_000  # the most Ray's state API lists in one answer
MAX_KEPT = 100_000  # tasks the cursor remembers
TIMEOUT_S = 10

LIMITS = (
    "Argument edges: Ray's task events do not say which objects a task took as arguments, so "
    "the graph shows each task's return and its parent, not the objects that fed it.",
    "Cells: Ray's records do not carry the notebook cell that submitted a task, so these pages "
    "cannot group tasks by cell (the notebook's own task graph and cell strip can: its kernel "
    "knows which cell submitted each task).",
    "Placement reasons: Ray does not record why a task ran on its node.",
    "Live log lines: read them in the notebook (each task's prints reach its cell); Ray's log "
    "files stay on the cluster's nodes.",
    "Free resources and store use per node are estimated from running tasks and listed "
    "objects (Ray's state API gives totals only).",
    "Cancelling from the dashboard: interrupt the notebook's cell instead.",
)

# Ray's task states -> the states the views draw.
STATE_MAP = {
    "NIL": "PENDING_ARGS_AVAIL",
    "PENDING_ARGS_AVAIL": "PENDING_ARGS_AVAIL",
    "PENDING_ARGS_FETCH": "PENDING_ARGS_AVAIL",
    "PENDING_OBJ_STORE_MEM_AVAIL": "PENDING_NODE_ASSIGNMENT",
    "PENDING_NODE_ASSIGNMENT": "PENDING_NODE_ASSIGNMENT",
    "SUBMITTED_TO_WORKER": "SUBMITTED_TO_WORKER",
    "PENDING_ACTOR_TASK_ARGS_FETCH": "SUBMITTED_TO_WORKER",
    "PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY": "SUBMITTED_TO_WORKER",
    "RUNNING": "RUNNING",
    "RUNNING_IN_RAY_GET": "RUNNING",
    "RUNNING_IN_RAY_WAIT": "RUNNING",
    "FINISHED": "FINISHED",
    "FAILED": "FAILED",
}
_DRIVER_PREFIX = "f" * 40  # Ray's driver "task" ids: no parent the views can show


def _seconds(ms: float | None) -> float | None:
    return ms / 1000.0 if ms else None


def task_record(task: dict) -> dict:
    """One of ``ray.util.state.list_tasks(detail=True)``'s records as cellfleet's GCS keeps it."""
    events: dict[str, float] = {}
    for event in task.get("events") or ():
        state = STATE_MAP.get(event.get("state"))
        if state is not None and state not in events:
            events[state] = event["created_ms"] / 1000.0
    state = STATE_MAP.get(task.get("state") or "", "PENDING_ARGS_AVAIL")
    parent = task.get("parent_task_id")
    if not parent or parent.startswith(_DRIVER_PREFIX):
        parent = None
    error = task.get("error_message")
    if task.get("error_type") == "TASK_CANCELLED":
        error = f"TaskCancelledError: task {task['task_id']} was cancelled"
    kind = task.get("type")
    returns = [task["task_id"] + "01000000"] if kind in ("NORMAL_TASK", "ACTOR_TASK") else []
    return {
        "task_id": task["task_id"], "name": task.get("name") or "?",
        "func_or_class_name": task.get("func_or_class_name"), "state": state,
        "events": events, "job_id": task.get("job_id"), "tag": None, "type": kind,
        "actor_id": task.get("actor_id"), "node_id": task.get("node_id"),
        "worker_id": task.get("worker_id"), "worker_pid": task.get("worker_pid"),
        "error_message": error, "parent_task_id": parent,
        "start_time": _seconds(task.get("start_time_ms")),
        "end_time": _seconds(task.get("end_time_ms")),
        "attempt_number": task.get("attempt_number") or 0,
        "resources": task.get("required_resources") or {},
        "args": [], "returns": returns,
    }


def actor_record(actor: dict) -> dict:
    return {
        "actor_id": actor["actor_id"], "class_name": actor.get("class_name"),
        "name": actor.get("name") or "", "namespace": actor.get("ray_namespace"),
        "state": actor.get("state"), "node_id": actor.get("node_id") or "",
        "pid": actor.get("pid") or 0, "num_restarts": actor.get("num_restarts") or 0,
        "death_cause": str(actor.get("death_cause") or ""), "job_id": actor.get("job_id"),
        "address": "",
    }


class RayTranslator:
    """Ray's lists -> cellfleet's answers, with a change cursor over the tasks (no I/O)."""

    def __init__(self) -> None:
        self.seq = 0
        self.changed: OrderedDict[str, tuple[int, dict]] = OrderedDict()  # id -> (seq, rec)
        self.nodes: list[dict] = []
        self.objects: list[dict] = []

    def add_tasks(self, tasks: list[dict]) -> None:
        """A fresh listing: tasks whose state or events moved get a new sequence number."""
        for task in tasks:
            record = task_record(task)
            held = self.changed.get(record["task_id"])
            if held is not None and held[1]["state"] == record["state"] and \
                    held[1]["events"] == record["events"]:
                continue
            self.seq += 1
            self.changed[record["task_id"]] = (self.seq, record)
            self.changed.move_to_end(record["task_id"])
            while len(self.changed) > MAX_KEPT:
                self.changed.popitem(last=False)

    def changes_since(self, cursor: int, limit: int) -> dict:
        out = [record for seq, record in self.changed.values() if seq > cursor][-limit:]
        return {"cursor": self.seq, "tasks": out}

    def records(self, filters: dict, limit: int) -> list[dict]:
        """Newest first, like the GCS's ``ListTasks``."""
        out = []
        for _, record in reversed(self.changed.values()):
            if all(record.get(k) == v for k, v in filters.items()):
                out.append(record)
                if len(out) >= limit:
                    break
        return out

    def summary(self) -> dict:
        counts: dict[str, dict[str, int]] = {}
        for _, record in self.changed.values():
            states = counts.setdefault(record["name"], {})
            states[record["state"]] = states.get(record["state"], 0) + 1
        return {"total_tasks": len(self.changed),
                "summary": {name: {"state_counts": c} for name, c in counts.items()}}

    def groups(self, filters: dict) -> dict:
        """``[job_id, tag, name, {state: n}]`` per function (Ray has no cells: tag None)."""
        counts: dict[tuple, dict[str, int]] = {}
        for _, record in self.changed.values():
            if filters.get("job_id") is not None and record["job_id"] != filters["job_id"]:
                continue
            if filters.get("tag") is not None:
                continue
            states = counts.setdefault((record["job_id"], record["name"]), {})
            states[record["state"]] = states.get(record["state"], 0) + 1
        return {"cursor": self.seq,
                "groups": [[job, None, name, c] for (job, name), c in counts.items()]}

    def set_objects(self, objects: list[dict]) -> list[dict]:
        by_ip = {n["node_ip"]: n["node_id"] for n in self.nodes if n.get("node_ip")}
        self.objects = [{
            "object_id": o["object_id"], "size": o.get("object_size") or 0,
            "where": "shared_memory", "node_id": by_ip.get(o.get("ip")),
            "source": (o.get("type") or "").lower() or None, "tag": None,
            "call_site": None if o.get("call_site") in (None, "disabled") else o["call_site"],
            "reference_type": o.get("reference_type"), "pid": o.get("pid"),
        } for o in objects]
        return self.objects

    def node_records(self, nodes: list[dict]) -> list[dict]:
        """Ray's nodes with free resources estimated from the running tasks and store use
        from the listed objects."""
        self.nodes = nodes
        used: dict[str, dict[str, float]] = {}
        for _, record in self.changed.values():
            if record["state"] == "RUNNING" and record["node_id"]:
                per = used.setdefault(record["node_id"], {})
                for key, amount in record["resources"].items():
                    per[key] = per.get(key, 0.0) + amount
        stored: dict[str, list[int]] = {}
        for obj in self.objects:
            entry = stored.setdefault(obj.get("node_id") or "", [0, 0])
            entry[0] += obj["size"]
            entry[1] += 1
        out = []
        for node in nodes:
            total = {k: v for k, v in (node.get("resources_total") or {}).items()
                     if not k.startswith("node:")}
            busy = used.get(node["node_id"], {})
            size, count = stored.get(node["node_id"], [0, 0])
            out.append({
                "node_id": bytes.fromhex(node["node_id"]),
                "raylet_address": node.get("node_ip") or "",
                "alive": node.get("state") == "ALIVE",
                "resources": total,
                "available": {k: max(0.0, v - busy.get(k, 0.0)) for k, v in total.items()},
                "store": {"capacity": total.get("object_store_memory", 0), "used": size,
                          "num_objects": count, "spilled_bytes": 0},
                "death_reason": node.get("state_message") or "",
                "is_head_node": bool(node.get("is_head_node")),
            })
        return out


def _plain(items: list[Any]) -> list[dict]:
    """State API answers (dataclasses or dicts) as dicts."""
    out = []
    for item in items:
        out.append(item if isinstance(item, dict) else dict(vars(item)))
    return out


class RayStateSource:
    """Answers the views' GCS messages from the Ray cluster whose state API is at ``url``."""

    limits = LIMITS

    def __init__(self, url: str) -> None:
        self.url = url
        self.translator = RayTranslator()
        self.read_at = 0.0
        self._locks: dict[int, asyncio.Lock] = {}  # per event loop (a feed's loop can change)

    def _list(self, what: str, **kwargs: Any) -> list[dict]:
        from ray.util import state

        lister = getattr(state, f"list_{what}")
        return _plain(lister(address=self.url, limit=MAX_TASKS, timeout=TIMEOUT_S,
                             raise_on_missing_output=False, **kwargs))

    async def _tasks(self) -> None:
        """Read Ray's task list at most every half second (every view question shares it)."""
        loop = id(asyncio.get_running_loop())
        lock = self._locks.get(loop)
        if lock is None:
            self._locks.clear()  # the loops before this one have ended
            lock = self._locks[loop] = asyncio.Lock()
        async with lock:
            if time.monotonic() - self.read_at < 0.5:
                return
            tasks = await asyncio.to_thread(self._list, "tasks", detail=True)
            self.translator.add_tasks(tasks)
            self.read_at = time.monotonic()

    async def ask(self, *messages: Any) -> list[Any]:
        from cellfleet import _messages as m

        out: list[Any] = []
        for msg in messages:
            if isinstance(msg, (m.ListTasks, m.ListTaskChanges, m.SummarizeTasks,
                                m.ListTaskGroups, m.GetNodes)):
                await self._tasks()
            if isinstance(msg, m.ListTaskChanges):
                out.append(self.translator.changes_since(msg.since, msg.limit))
            elif isinstance(msg, m.ListTasks):
                out.append(self.translator.records(msg.filters, msg.limit))
            elif isinstance(msg, m.SummarizeTasks):
                out.append(self.translator.summary())
            elif isinstance(msg, m.ListTaskGroups):
                out.append(self.translator.groups(msg.filters))
            elif isinstance(msg, m.GetNodes):
                nodes = await asyncio.to_thread(self._list, "nodes", detail=True)
                out.append(self.translator.node_records(nodes))
            elif isinstance(msg, m.ListActors):
                actors = await asyncio.to_thread(self._list, "actors", detail=True)
                out.append([actor_record(a) for a in actors])
            elif isinstance(msg, m.ListObjects):
                objects = await asyncio.to_thread(self._list, "objects")
                out.append(self.translator.set_objects(objects[:msg.limit]))
            else:
                raise ValueError(f"a Ray cluster cannot answer {type(msg).__name__}")
        return out
