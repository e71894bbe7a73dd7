"""The owner's dependency resolver: tasks wait here until their arguments are ready.

Ray's LocalDependencyResolver, as a state class with no I/O: the core worker says which of a
task's argument objects are not ready yet, then reports each object as it becomes ready; the
resolver answers with the tasks whose last missing argument that was. A task is released once,
however many of its arguments (or repeats of one argument) it waited for.
"""

from __future__ import annotations

__all__ = ["DependencyResolver"]


class DependencyResolver:
    """Which pending tasks wait for which objects."""

    def __init__(self) -> None:
        self._waiting: dict[bytes, list[bytes]] = {}  # object id -> tasks waiting for it
        self._missing: dict[bytes, int] = {}  # task id -> arguments not ready yet

    def __len__(self) -> int:
        return len(self._missing)

    def wait_for(self, task_id: bytes, object_ids: list[bytes]) -> bool:
        """Register a task's not-ready arguments; True if none are missing (run it now)."""
        distinct = set(object_ids)
        if not distinct:
            return True
        self._missing[task_id] = len(distinct)
        for object_id in distinct:
            self._waiting.setdefault(object_id, []).append(task_id)
        return False

    def is_awaited(self, object_id: bytes) -> bool:
        return object_id in self._waiting

    def ready(self, object_id: bytes) -> list[bytes]:
        """An object became ready: the tasks now ready to go, in the order they came."""
        released = []
        for task_id in self._waiting.pop(object_id, ()):
            left = self._missing.get(task_id)
            if left is None:
                continue
            if left == 1:
                del self._missing[task_id]
                released.append(task_id)
            else:
                self._missing[task_id] = left - 1
        return released

    def validate_state(self) -> None:
        """Every waiting task is counted once per distinct object it waits for."""
        counts: dict[bytes, int] = {}
        for tasks in self._waiting.values():
            assert len(tasks) == len(set(tasks))
            for task_id in tasks:
                counts[task_id] = counts.get(task_id, 0) + 1
        assert counts == self._missing, (counts, self._missing)
