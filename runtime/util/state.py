"""Ray's state API over the GCS: tasks, actors, objects, nodes, jobs and summaries.

Each call asks the GCS once; records are dicts that also allow attribute access
(``task.state`` as well as ``task["state"]``).
"""

from __future__ import annotations

from typing import Any

from .. import _messages as m
from ..api import _core

__all__ = [
    "StateRecord",
    "list_actors",
    "list_jobs",
    "list_nodes",
    "list_objects",
    "list_tasks",
    "summarize_tasks",
]

Filter = tuple[str, str, Any]


class StateRecord(dict):
    """A state record: a dict whose keys are also attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _ask(message: m.Message) -> Any:
    return _core().request("gcs", message)


def _apply(records: list[dict], filters: list[Filter] | None, limit: int) -> list[StateRecord]:
    out = []
    for record in records:
        if _matches(record, filters or []):
            out.append(StateRecord(record))
            if len(out) >= limit:
                break
    return out


def _matches(record: dict, filters: list[Filter]) -> bool:
    for key, op, value in filters:
        if op not in ("=", "!="):
            raise ValueError(f"unsupported filter predicate {op!r}: use '=' or '!='")
        have = record.get(key)
        equal = str(have) == str(value) if not isinstance(value, type(have)) else have == value
        if equal != (op == "="):
            return False
    return True


def list_tasks(filters: list[Filter] | None = None, limit: int = 10_000,
               detail: bool = False) -> list[StateRecord]:
    """Tasks with their state, name, node, worker, parent, arguments and timestamps."""
    return _apply(_ask(m.ListTasks({}, 1_000_000)), filters, limit)


def list_actors(filters: list[Filter] | None = None, limit: int = 10_000,
                detail: bool = False) -> list[StateRecord]:
    """Actors with Ray's field names and states (PENDING_CREATION, ALIVE, DEAD)."""
    actors = []
    for actor in _ask(m.ListActors()):
        state = actor["state"]
        end_time = actor.get("end_time")
        actors.append({
            "actor_id": actor["actor_id"].hex(),
            "class_name": actor["class_name"],
            "state": _ACTOR_STATES.get(state, state),
            "name": actor["name"],
            "namespace": actor["namespace"],
            "ray_namespace": actor["namespace"],
            "pid": actor["pid"] or None,
            "node_id": actor["node_id"].hex() or None,
            "job_id": int(actor["job_id"]).to_bytes(4, "little").hex(),
            "is_detached": actor["detached"],
            "num_restarts": actor["num_restarts"],
            "max_restarts": actor["max_restarts"],
            "death_cause": actor.get("death_cause") or None,
            "death_message": actor.get("death_detail") or actor.get("death_message") or None,
            "start_time_ms": int(actor["start_time"] * 1000),
            "end_time_ms": int(end_time * 1000) if end_time else None,
        })
    return _apply(actors, filters, limit)


# The GCS's actor states under Ray's names.
_ACTOR_STATES = {"PENDING": "PENDING_CREATION"}


def list_objects(filters: list[Filter] | None = None, limit: int = 10_000,
                 detail: bool = False) -> list[StateRecord]:
    """Live objects: id, size, owner, node, where they are (inline or shared memory)."""
    return _apply(_ask(m.ListObjects(1_000_000)), filters, limit)


def list_nodes(filters: list[Filter] | None = None, limit: int = 10_000,
               detail: bool = False) -> list[StateRecord]:
    """Nodes of the cluster with Ray's field names."""
    nodes = []
    for node in _ask(m.GetNodes()):
        host = node["raylet_address"].rpartition(":")[0]
        nodes.append({
            "node_id": node["node_id"].hex(),
            "node_ip": host,
            "state": "ALIVE" if node["alive"] else "DEAD",
            "is_head_node": "node:__internal_head__" in node["resources"],
            "resources_total": node["resources"],
            "resources_available": node["available"],
            "object_store": node["store"],
            "raylet_address": node["raylet_address"],
            "start_time_ms": int(node["start_time"] * 1000),
            "death_reason": node["death_reason"],
        })
    return _apply(nodes, filters, limit)


def list_jobs(filters: list[Filter] | None = None, limit: int = 10_000) -> list[StateRecord]:
    return _apply(_ask(m.ListJobs()), filters, limit)


def summarize_tasks() -> StateRecord:
    """Task counts per function name and state."""
    return StateRecord(_ask(m.SummarizeTasks()))
