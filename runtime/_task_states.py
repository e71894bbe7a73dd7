"""The states of a task's record, in order, and how several events of one task merge.

A task's events (``[task_id, state, time, info]``) may come from its owner and its worker, and
out of order; a record keeps the furthest state, every state's timestamp and the fields each
state adds. The same rule merges the events a core worker recorded between two flushes into
one event per task (``coalesce``), whose time is then ``{state: time}``.
"""

from __future__ import annotations

__all__ = ["RANK", "TASK_STATES", "TERMINAL_STATES", "coalesce"]

TASK_STATES = (
    "PENDING_ARGS_AVAIL",
    "PENDING_NODE_ASSIGNMENT",
    "SUBMITTED_TO_WORKER",
    "RUNNING",
    "FINISHED",
    "FAILED",
)
RANK = {state: i for i, state in enumerate(TASK_STATES)}
TERMINAL_STATES = frozenset({"FINISHED", "FAILED"})


def coalesce(events: list[list]) -> list[list]:
    """One event per task, in the order of each task's first: the furthest state, a
    ``{state: time}`` dict when it merged several, and the fields of all (later ones win)."""
    merged: dict[bytes, list] = {}
    for event in events:
        task_id, state, ts, info = event
        held = merged.get(task_id)
        if held is None:
            merged[task_id] = event
            continue
        times = held[2]
        if type(times) is not dict:
            times = held[2] = {held[1]: times}
        times[state] = ts
        if RANK.get(state, 0) >= RANK.get(held[1], 0):
            held[1] = state
        if info:
            held[3] = {**held[3], **info} if held[3] else info
    return list(merged.values())
