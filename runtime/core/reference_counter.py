"""The reference counter (Ray's ReferenceCounter): objects counted by their owner, and every
process's view of its refs.

Each core worker keeps one entry per object it owns or borrows. An entry counts:

- ``local``: live ``ObjectRef`` instances in this process, plus one for each live object
  here that contains the ref;
- ``submitted``: pending tasks that take the object as an argument;
- ``borrowers``: other processes holding refs (owned entries only).

An owned object is freed when all three are zero; a borrowed entry, when ``local`` and
``submitted`` are, tells the owner it stopped borrowing. Increments happen at once under a
lock; releases from ``ObjectRef.__del__`` (which can run inside the garbage collector, with
the lock held by the same thread) are queued without locking and applied on the I/O thread.
That queue is the core worker's single ordered queue of work for its I/O thread, so a release
is never applied before an operation the same thread queued earlier (pinning a view, say).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ObjectEntry", "ReferenceCounter"]


@dataclass(slots=True, eq=False)
class ObjectEntry:
    owner: str
    owned: bool
    local: int = 0
    submitted: int = 0
    borrowers: set[str] = field(default_factory=set)
    contains: list[list] = field(default_factory=list)  # [[object_id, owner], ...]
    payload: list | None = None  # see core.task_spec.Payload; None while pending
    waiters: list = field(default_factory=list)  # one-shot wake-ups of waiting threads
    callbacks: list[Callable[[ObjectEntry], None]] = field(default_factory=list)
    spec: Any = None  # the TaskSpec that makes it (lineage), for owned task returns
    fetching: bool = False  # a borrowed entry whose owner has been asked
    size: int = 0


class ReferenceCounter:
    """The objects one core worker owns or borrows, and when each can go."""

    def __init__(self, address: str, queue: deque, wake: Callable[[], None],
                 on_free: Callable[[bytes, ObjectEntry], None],
                 on_borrow: Callable[[bytes, str], None]) -> None:
        self.address = address
        self.lock = threading.Lock()
        self.entries: dict[bytes, ObjectEntry] = {}
        self._queue = queue  # the I/O thread's queue: bytes items are releases
        self._wake = wake
        self._on_free = on_free
        self._on_borrow = on_borrow

    # -- called from any thread -----------------------------------------------------------

    def create_owned(self, object_id: bytes, spec: Any = None, payload: list | None = None,
                     size: int = 0) -> ObjectEntry:
        """Register an object this process owns (a task return or a put)."""
        entry = ObjectEntry(self.address, True, payload=payload, spec=spec, size=size)
        with self.lock:
            self.entries[object_id] = entry
        return entry

    def add_local_ref(self, object_id: bytes, owner: str) -> None:
        with self.lock:
            entry = self.entries.get(object_id)
            if entry is None:
                owned = owner == self.address
                entry = self.entries[object_id] = ObjectEntry(owner, owned)
                if not owned:
                    self._queue.append(lambda: self._on_borrow(object_id, owner))
                    self._wake()
            entry.local += 1

    def release_local_ref(self, object_id: bytes) -> None:
        """Lock-free: safe from ``__del__`` anywhere."""
        self._queue.append(object_id)
        self._wake()

    def add_submitted(self, object_ids: list[bytes]) -> None:
        with self.lock:
            for object_id in object_ids:
                entry = self.entries.get(object_id)
                if entry is not None:
                    entry.submitted += 1

    # -- called on the I/O thread ---------------------------------------------------------

    def apply_releases(self, object_ids: list[bytes]) -> None:
        """Apply ``ObjectRef`` releases taken from the queue; frees what nobody can reach."""
        freed: list[tuple[bytes, ObjectEntry]] = []
        with self.lock:
            for object_id in object_ids:
                entry = self.entries.get(object_id)
                if entry is None:
                    continue
                entry.local -= 1
                self._collect_if_unreachable(object_id, entry, freed)
        self._free(freed)

    def remove_submitted(self, object_ids: list[bytes]) -> None:
        freed: list[tuple[bytes, ObjectEntry]] = []
        with self.lock:
            for object_id in object_ids:
                entry = self.entries.get(object_id)
                if entry is not None:
                    entry.submitted -= 1
                    self._collect_if_unreachable(object_id, entry, freed)
        self._free(freed)

    def add_borrower(self, object_ids: list[bytes], borrower: str) -> None:
        with self.lock:
            for object_id in object_ids:
                entry = self.entries.get(object_id)
                if entry is not None and entry.owned:
                    entry.borrowers.add(borrower)

    def remove_borrower(self, object_ids: list[bytes], borrower: str) -> None:
        freed: list[tuple[bytes, ObjectEntry]] = []
        with self.lock:
            for object_id in object_ids:
                entry = self.entries.get(object_id)
                if entry is not None:
                    entry.borrowers.discard(borrower)
                    self._collect_if_unreachable(object_id, entry, freed)
        self._free(freed)

    def borrower_gone(self, borrower: str) -> None:
        """A process holding refs of ours exited: it holds nothing any more. ``host:*``:
        every process at that host (its node died)."""
        if borrower.endswith(":*"):
            prefix = borrower[:-1]
            with self.lock:
                gone = {b for e in self.entries.values() for b in e.borrowers
                        if b.startswith(prefix)}
            for address in gone:
                self.borrower_gone(address)
            return
        with self.lock:
            ids = [oid for oid, e in self.entries.items() if borrower in e.borrowers]
        self.remove_borrower(ids, borrower)

    def set_contains(self, object_id: bytes, contained: list[list]) -> None:
        """The object holds refs to others: they live at least as long as it does."""
        with self.lock:
            entry = self.entries.get(object_id)
            if entry is None or not contained:
                return
            entry.contains = contained
        for inner_id, owner in contained:
            self.add_local_ref(inner_id, owner)

    def _free(self, freed: list[tuple[bytes, ObjectEntry]]) -> None:
        """Hand freed entries on; refs they contained are released through the queue."""
        for object_id, entry in freed:
            self._on_free(object_id, entry)
            if entry.contains:
                self._queue.extend(inner_id for inner_id, _ in entry.contains)
                self._wake()

    def _collect_if_unreachable(self, object_id: bytes, entry: ObjectEntry,
                                freed: list[tuple[bytes, ObjectEntry]]) -> None:
        if entry.local <= 0 and entry.submitted <= 0 and not entry.borrowers:
            del self.entries[object_id]
            freed.append((object_id, entry))
