"""Requests the Jupyter server's dashboard sends a notebook's kernel on its control channel.

ipykernel serves the control channel on a thread of its own, so these are answered while a
cell runs (a cell blocked in ``get`` on the task to cancel is the usual case). A request is a
``cellfleet_request`` message; the reply a ``cellfleet_reply``:

* ``{"op": "cancel", "task_id": HEX}``: cancel a task this notebook submitted;
* ``{"op": "objects", "limit": N, "tags": [...]}``: the objects this notebook owns, largest
  first, with what keeps each alive, and the names of the cells of ``tags`` ("In [3]");
* ``{"op": "cells", "tags": [...]}``: only those names.

Each may name its cluster (``"gcs": HOST:PORT``): a kernel using another answers
``{"status": "other_cluster"}``.

See ``cellfleet.widgets.owner`` for both, and ``cellfleet.extension.kernels`` for the sender.
"""

from __future__ import annotations

from typing import Any

__all__ = ["REPLY", "REQUEST", "answer", "install"]

REQUEST = "cellfleet_request"
REPLY = "cellfleet_reply"


def answer(content: dict) -> dict[str, Any]:
    """The reply to one request (no I/O beyond what the request does)."""
    from cellfleet import _context
    from cellfleet.widgets.owner import MAX_OBJECTS, cancel_task, owned_objects

    core = _context.core
    gcs = content.get("gcs")
    if gcs and (core is None or core.gcs_address != gcs):
        return {"status": "other_cluster", "error": "this kernel does not use that cluster"}
    op = content.get("op")
    if op == "cancel":
        return cancel_task(str(content.get("task_id", "")))
    if op == "objects":
        try:
            limit = max(1, min(MAX_OBJECTS, int(content.get("limit", MAX_OBJECTS))))
        except (TypeError, ValueError):
            limit = MAX_OBJECTS
        tags = [str(t) for t in (content.get("tags") or [])[:MAX_OBJECTS]]
        return {"status": "ok", **owned_objects(limit, tags)}
    if op == "cells":
        from cellfleet.widgets.feed import CELL_LABELS

        tags = [str(t) for t in (content.get("tags") or [])[:MAX_OBJECTS]]
        return {"status": "ok", "cells": {t: CELL_LABELS[t] for t in tags if t in CELL_LABELS}}
    return {"status": "error", "error": f"unknown request {op!r}: ask for cancel, objects or cells"}


def install(kernel: Any) -> None:
    """Serve ``cellfleet_request`` on ``kernel``'s control channel."""

    def handle(stream: Any, ident: Any, parent: dict) -> None:
        try:
            reply = answer(parent.get("content") or {})
        except Exception as exc:  # noqa: BLE001 - the dashboard shows why
            reply = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        kernel.session.send(stream, REPLY, reply, parent, ident)

    kernel.control_handlers[REQUEST] = handle
