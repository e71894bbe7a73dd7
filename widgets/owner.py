"""What a driver, as the owner of its tasks and objects, tells and does for the views.

``cancel_task`` cancels a task this process submitted (the widget's Cancel button, and the
dashboard's through the notebook's kernel). ``owned_objects`` is Ray's ``ray memory`` for this
process: every object it owns, with what keeps it alive (reference types, as Ray names them):

* ``LOCAL_REFERENCE``: an ``ObjectRef`` to it lives in this process;
* ``USED_BY_PENDING_TASK``: a task that takes it as an argument has not ended;
* ``CAPTURED_IN_OBJECT``: another live object holds a ref to it;
* ``PINNED_IN_MEMORY``: a zero-copy value read from it (a numpy array from ``get``) lives
  here, pinning its bytes in the node's shared memory;
* ``BORROWED``: other processes hold refs (its ``borrowers``, by core worker address).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from cellfleet import _context

from .feed import CELL_LABELS

__all__ = ["MAX_OBJECTS", "REFERENCE_TYPES", "cancel_task", "owned_objects"]

MAX_OBJECTS = 200
REFERENCE_TYPES = ("LOCAL_REFERENCE", "USED_BY_PENDING_TASK", "CAPTURED_IN_OBJECT",
                   "PINNED_IN_MEMORY", "BORROWED")


def cancel_task(task_id: str) -> dict[str, str]:
    """Cancel the task ``task_id`` (hex) if this process submitted it and holds it.

    Returns ``{"status": "ok"}``, or ``{"status": "not_owner" | "error", "error": why}``.
    """
    import cellfleet
    from cellfleet._ids import object_id_for
    from cellfleet.core.object_ref import ObjectRef

    core = _context.core
    if core is None:
        return {"status": "error", "error": "no cellfleet runtime in this process"}
    try:
        tid = bytes.fromhex(task_id)
    except ValueError:
        tid = b""
    if len(tid) != 16:
        return {"status": "error", "error": f"not a task id: {task_id!r} (32 hex digits)"}
    object_id = object_id_for(tid, 1)
    entry = core.refs.entries.get(object_id)
    if entry is None or not entry.owned:
        return {"status": "not_owner",
                "error": f"task {task_id} is not held here: it ended, or another process "
                         "submitted it (cancel a nested task through its parent)"}
    cellfleet.cancel(ObjectRef(object_id, core.address))
    return {"status": "ok"}


_WHERE = {"s": "shared_memory", "i": "inline", None: "pending"}


def _payload_size(entry: Any) -> int | None:
    payload = entry.payload
    if entry.size:
        return entry.size
    if not payload:
        return None
    if payload[0] == "s":
        return payload[2]
    try:
        return len(payload[1][1]) + sum(map(len, payload[1][2]))
    except (IndexError, TypeError):
        return None


def owned_objects(limit: int = MAX_OBJECTS, tags: list[str] = ()) -> dict[str, Any]:
    """The objects this process owns, the largest ``limit`` first, with their references;
    ``cells`` names the cells of ``tags`` (and of the objects' tasks) as "In [3]"."""
    core = _context.core
    if core is None:
        return {"address": None, "total": 0, "objects": [], "cells": {}}
    pinned = Counter(core.pins.views())  # zero-copy values read from each, alive here
    with core.refs.lock:
        entries = [(oid, e.local, e.submitted, sorted(e.borrowers), _payload_size(e),
                    e.payload, e.spec, list(e.contains))
                   for oid, e in core.refs.entries.items() if e.owned]
    captured: Counter = Counter()
    for *_, contains in entries:
        for inner, _owner in contains:
            captured[inner] += 1
    rows = []
    for oid, local, submitted, borrowers, size, payload, spec, _contains in entries:
        inside = captured[oid]
        kinds = {"LOCAL_REFERENCE": max(0, local - inside), "USED_BY_PENDING_TASK": submitted,
                 "CAPTURED_IN_OBJECT": inside, "PINNED_IN_MEMORY": pinned[oid],
                 "BORROWED": len(borrowers)}
        tag = spec.tag if spec is not None else ""
        rows.append({
            "object_id": oid.hex(), "size": size,
            "where": _WHERE.get(payload[0] if payload else None, "?"),
            "node_id": payload[3].hex() if payload and payload[0] == "s" else None,
            "source": "put" if not any(oid[16:]) else "task",  # a put's index is 0
            "task": None if spec is None else spec.name,
            "tag": tag or None,
            "references": {k: n for k, n in kinds.items() if n}, "borrowers": borrowers,
        })
    rows.sort(key=lambda r: r["size"] or 0, reverse=True)
    rows = rows[:limit]
    wanted = [*tags[:limit], *(r["tag"] for r in rows if r["tag"])]
    cells = {tag: CELL_LABELS[tag] for tag in wanted if tag in CELL_LABELS}
    return {"address": core.address, "total": len(entries), "objects": rows, "cells": cells}
