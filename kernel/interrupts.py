"""Cancelling the remote work of an interrupted cell.

Every task the driver submits carries its cell's msg_id as its tag. When a cell ends with
KeyboardInterrupt, ``cancel_cell(tag)`` cancels the tasks of that tag still pending (and,
recursively, the tasks they submitted); those still running a second later are cancelled
with ``force=True``, which ends their worker and frees its resources.
"""

from __future__ import annotations

import threading
import time
import types
from typing import Any

from cellfleet import _context
from cellfleet.core.core_worker import DRIVER_TASK_ID

__all__ = ["cancel_cell", "cancel_refs", "pending_tasks"]

FORCE_AFTER_S = 1.0


def pending_tasks(tag: str | None = None, task_ids: set[bytes] | None = None) -> list[tuple]:
    """``(task_id, is_actor_task)`` of the driver's unfinished tasks with this tag."""
    core = _context.core
    if core is None:
        return []

    async def collect() -> list[tuple]:
        out = []
        for spec in core.tasks.specs():
            if spec.parent_task_id != DRIVER_TASK_ID:
                continue
            if tag is not None and spec.tag != tag:
                continue
            if task_ids is not None and spec.task_id not in task_ids:
                continue
            out.append((spec.task_id, bool(getattr(spec, "actor_id", b""))))
        return out

    try:
        return core.run(collect(), timeout=2)
    except Exception:  # noqa: BLE001 - a runtime going away has nothing to cancel
        return []


def _cancel(tasks: list[tuple], force: bool) -> None:
    core = _context.core
    if core is None:
        return
    for task_id, is_actor in tasks:
        # CoreWorker.cancel only reads the task id off the ref; the ref itself may be gone.
        ref: Any = types.SimpleNamespace(_id=task_id + bytes(4))
        try:
            core.cancel(ref, force=force and not is_actor, recursive=True)
        except Exception:  # noqa: BLE001 - best effort: the task may have just finished
            pass


def _escalate(task_ids: set[bytes]) -> None:
    deadline = time.monotonic() + FORCE_AFTER_S
    while time.monotonic() < deadline:
        if not pending_tasks(task_ids=task_ids):
            return
        time.sleep(0.05)  # polling the runtime's table, not synchronization
    _cancel(pending_tasks(task_ids=task_ids), force=True)


def _start(tasks: list[tuple], *, force: bool) -> int:
    if not tasks:
        return 0
    _cancel(tasks, force=force)
    if not force:
        ids = {task_id for task_id, _ in tasks}
        threading.Thread(target=_escalate, args=(ids,), name="cellfleet-cancel",
                         daemon=True).start()
    return len(tasks)


def cancel_cell(tag: str, *, force: bool = False, background: bool = False) -> int | None:
    """Cancel what the cell ``tag`` started; the number of tasks cancelled.

    ``background``: return at once (None) and cancel from a thread, so an interrupted cell's
    reply does not wait for the runtime.
    """
    if background:
        threading.Thread(target=lambda: _start(pending_tasks(tag=tag), force=force),
                         name="cellfleet-cancel-cell", daemon=True).start()
        return None
    return _start(pending_tasks(tag=tag), force=force)


def cancel_refs(refs: list, *, force: bool = False, background: bool = False) -> int | None:
    """Cancel the tasks that make these refs (``background``: from a thread)."""
    ids = {ref._id[:16] for ref in refs}
    if background:
        threading.Thread(target=lambda: _start(pending_tasks(task_ids=ids), force=force),
                         name="cellfleet-cancel-refs", daemon=True).start()
        return None
    return _start(pending_tasks(task_ids=ids), force=force)
