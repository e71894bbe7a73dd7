"""The node's object store: which objects live where in the shared-memory arena.

Processes on the node map the arena themselves and copy object bytes in and out directly;
the store only hands out space, remembers each object's owner and readers, and frees space
once the owner has released the object and no reader still maps it.

When the arena is full, primary copies nobody is reading are spilled to files: the store
picks them (``spill_candidates``), the raylet writes their bytes out while the store holds a
pin of its own on them (``SPILLER``), and ``spilled_out`` then frees their blocks. A spilled
object is still known by id: a reader's ``locate`` finds it in ``spilled``, the raylet
allocates a block and reads the file back (``restoring``, then ``seal``). Freeing a spilled
object deletes its file (``take_spill_deletions``).

A copy pulled from another node is *secondary* (``allocate(..., secondary=True)``): it stays
after its readers unpin it (while its bytes arrive the pull holds a pin of its own,
``PULLER``, released by ``pulled``), until its owner frees the object or exits, and when the
arena is full it is evicted (``evict``, unread ones oldest first) before any primary is spilled.

Objects are known by id, never by offset outside the node: a creator allocates space, writes
the bytes and seals the object (``seal``); a reader asks for objects by id (``locate``), which
pins each one for that reader before saying where it is, so it cannot be freed or moved while
mapped. An object is immutable once sealed; one whose creator went away unsealed is dropped.

Freeing a large block answers with the range whose memory to give back to the system (the
whole free extent the block joined): the raylet punches it out of the arena file, so deleting a
2 GB object makes the node 2 GB lighter instead of leaving the pages committed. A block is
large when it is at least an eighth of the store (and ``RECLAIM_MIN_BYTES``); smaller ones keep
their pages, so the next object of that size is written at memory speed instead of faulting
every page in again (a put loop of 100 MB objects runs at ~10 GB/s, not ~1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .._messages import ALREADY_STORED
from ..exceptions import ObjectStoreFullError
from .allocator import ArenaAllocator

__all__ = ["PULLER", "RECLAIM_MIN_BYTES", "SPILLER", "ObjectStore", "SpilledObject",
           "StoredObject"]

RECLAIM_MIN_BYTES = 1 << 20  # the smallest block whose free gives pages back
SPILLER = "spiller"  # the store's own pin on an object whose bytes are being written out
PULLER = "puller"  # the pull's pin on a copy whose bytes are arriving (until ``pulled``)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@dataclass(slots=True)
class StoredObject:
    offset: int
    size: int
    owner: str
    readers: dict[Any, int] = field(default_factory=dict)  # reader connection -> pin count
    released: bool = False  # the owner no longer needs it
    sealed: bool = False  # its creator has written all of it
    writer: Any = None  # the creator's connection, until it seals
    secondary: bool = False  # a copy pulled from another node: evicted before spilling


@dataclass(slots=True)
class SpilledObject:
    size: int
    owner: str
    path: str


class ObjectStore:
    """Space accounting and lifetimes of the objects in one node's arena."""

    def __init__(self, capacity: int) -> None:
        self.allocator = ArenaAllocator(capacity)
        self.reclaim_min = max(RECLAIM_MIN_BYTES, capacity // 8)
        self.objects: dict[bytes, StoredObject] = {}
        self.spilled: dict[bytes, SpilledObject] = {}  # primaries whose bytes are in files
        self.spilled_total = 0  # objects spilled, ever
        self.restored_total = 0
        self._reclaim: list[tuple[int, int]] = []  # (offset, size) freed since the last answer
        self._deletions: list[str] = []  # spill files no object needs any more

    @property
    def capacity(self) -> int:
        return self.allocator.capacity

    def allocate(self, object_id: bytes, size: int, owner: str, writer: Any = None,
                 secondary: bool = False) -> int:
        """Reserve space for a new object (``ALREADY_STORED``: this node has it sealed, as
        Ray's plasma answers ObjectExists: nothing to write); ObjectStoreFullError says what
        is in the way."""
        existing = self.objects.get(object_id)
        if existing is not None:  # a retried or re-run task writing the same return again
            if existing.sealed:  # here already (a copy pulled here, an earlier attempt's)
                existing.released, existing.owner = False, owner  # now the primary copy
                existing.secondary = False
                return ALREADY_STORED
            if existing.size == size:
                existing.sealed, existing.writer, existing.released = False, writer, False
                return existing.offset
            # The earlier attempt's block may be smaller: writing there would overrun it.
            del self.objects[object_id]
            self.allocator.free_merged(existing.offset)
        offset = self.allocator.allocate(size)
        if offset is None:
            a = self.allocator
            raise ObjectStoreFullError(
                f"cannot store an object of {_mib(size)}: the object store holds "
                f"{_mib(a.used)} of its {_mib(a.capacity)} in {a.num_allocations} objects "
                f"(largest free block {_mib(a.largest_free_block)}). Release references to "
                "objects you no longer need, or start the cluster with a larger "
                "object_store_memory."
            )
        obj = self.objects[object_id] = StoredObject(offset, size, owner, writer=writer,
                                                     secondary=secondary)
        if secondary:  # its block is written by a pull: never freed under it
            obj.readers[PULLER] = 1
        return offset

    def pulled(self, object_id: bytes) -> list[tuple[int, int]]:
        """A pull has sealed its copy (and its readers have pinned it): the pull's own pin
        goes, and so does the copy if its owner freed it meanwhile."""
        return self.unpin(PULLER, [object_id])

    def seal(self, object_id: bytes) -> bool:
        """The creator has written the object: readers may map it. False if it is unknown."""
        obj = self.objects.get(object_id)
        if obj is None:
            return False
        obj.sealed, obj.writer = True, None
        return True

    def drop_unsealed(self, object_id: bytes) -> list[tuple[int, int]]:
        """Give up on an object whose bytes will never all arrive (a failed pull)."""
        obj = self.objects.get(object_id)
        if obj is not None and not obj.sealed:
            obj.released = True
            obj.readers.clear()
            self._free_if_unused(object_id, obj)
        return self._take_reclaim()

    def locate(self, reader: Any, object_ids: list[bytes]) -> list[list[int] | bool | None]:
        """Where each object is, ``[offset, size]``, pinned for ``reader`` first; ``None`` for
        an object not in this store, ``False`` for one not sealed yet or spilled (ask again
        once it is sealed: restored)."""
        where: list[list[int] | bool | None] = []
        for object_id in object_ids:
            obj = self.objects.get(object_id)
            if obj is None:
                where.append(False if object_id in self.spilled else None)
            elif not obj.sealed:
                where.append(False)
            else:
                obj.readers[reader] = obj.readers.get(reader, 0) + 1
                where.append([obj.offset, obj.size])
        return where

    def release(self, object_ids: list[bytes]) -> list[tuple[int, int]]:
        """The owner is done with these objects: free them once no reader maps them.
        Returns the ``(offset, size)`` ranges to give back to the system."""
        for object_id in object_ids:
            obj = self.objects.get(object_id)
            if obj is not None:
                obj.released = True
                self._free_if_unused(object_id, obj)
            spilled = self.spilled.pop(object_id, None)
            if spilled is not None:
                self._deletions.append(spilled.path)
        return self._take_reclaim()

    # -- spilling -------------------------------------------------------------------------

    def spill_candidates(self, size: int) -> list[bytes]:
        """Primary copies nobody reads whose blocks together make room for ``size`` more
        bytes (largest first); each is pinned by ``SPILLER`` until ``spilled_out``."""
        free = self.allocator.capacity - self.allocator.used
        chosen = []
        for object_id, obj in sorted(self.objects.items(), key=lambda kv: -kv[1].size):
            if free >= size:
                break
            if obj.sealed and not obj.released and not obj.readers and not obj.secondary:
                obj.readers[SPILLER] = 1
                chosen.append(object_id)
                free += obj.size
        return chosen

    def evict(self, size: int) -> tuple[list[tuple[bytes, str]], list[tuple[int, int]]]:
        """Free secondary copies nobody reads, oldest first, until ``size`` more bytes would
        fit (before any primary is spilled: the node that made an object still has it).
        Returns ``(object id, owner)`` of each copy evicted and the ranges to give back."""
        free = self.allocator.capacity - self.allocator.used
        evicted = []
        for object_id, obj in list(self.objects.items()):
            if free >= size:
                break
            if obj.secondary and obj.sealed and not obj.readers:
                evicted.append((object_id, obj.owner))
                free += obj.size
                obj.released = True
                self._free_if_unused(object_id, obj)
        return evicted, self._take_reclaim()

    def spilled_out(self, object_id: bytes, path: str | None) -> list[tuple[int, int]]:
        """The raylet wrote the object's bytes to ``path`` (``None``: it could not): free its
        block, unless a reader mapped it meanwhile (then the file goes instead)."""
        obj = self.objects.get(object_id)
        if obj is None:
            if path is not None:
                self._deletions.append(path)
            return self._take_reclaim()
        obj.readers.pop(SPILLER, None)
        if path is None or obj.released or obj.readers:
            if path is not None:
                self._deletions.append(path)
            self._free_if_unused(object_id, obj)
            return self._take_reclaim()
        del self.objects[object_id]
        self.spilled[object_id] = SpilledObject(obj.size, obj.owner, path)
        self.spilled_total += 1
        start, extent = self.allocator.free_merged(obj.offset)
        if obj.size >= self.reclaim_min:
            self._reclaim.append((start, extent))
        return self._take_reclaim()

    def restoring(self, object_id: bytes) -> tuple[int, SpilledObject]:
        """Make a block for a spilled object to be read back into (ObjectStoreFullError if
        there is no room); readers wait for its ``seal``."""
        spilled = self.spilled[object_id]
        offset = self.allocate(object_id, spilled.size, spilled.owner)
        del self.spilled[object_id]
        self.restored_total += 1
        self._deletions.append(spilled.path)
        return offset, spilled

    def take_spill_deletions(self) -> list[str]:
        """Spill files to delete now."""
        paths, self._deletions = self._deletions, []
        return paths

    def unpin(self, reader: Any, object_ids: list[bytes]) -> list[tuple[int, int]]:
        for object_id in object_ids:
            obj = self.objects.get(object_id)
            if obj is None:
                continue
            count = obj.readers.get(reader, 0) - 1
            if count > 0:
                obj.readers[reader] = count
            else:
                obj.readers.pop(reader, None)
            self._free_if_unused(object_id, obj)
        return self._take_reclaim()

    def reader_gone(self, reader: Any) -> list[tuple[int, int]]:
        """A connection closed: its pins end, and objects it left unsealed are dropped."""
        for object_id, obj in list(self.objects.items()):
            if obj.writer is reader and not obj.sealed:
                obj.released = True
                obj.readers.clear()
                self._free_if_unused(object_id, obj)
            elif obj.readers.pop(reader, None) is not None:
                self._free_if_unused(object_id, obj)
        return self._take_reclaim()

    def owner_gone(self, owner: str) -> list[tuple[int, int]]:
        """An owner process exited (``host:*``: every process at that host, its node died):
        nobody can reach its objects any more."""
        if owner.endswith(":*"):
            prefix = owner[:-1]
            owns = lambda o: o.startswith(prefix)  # noqa: E731
        else:
            owns = owner.__eq__
        return self.release([oid for oid, obj in self.objects.items() if owns(obj.owner)]
                            + [oid for oid, obj in self.spilled.items() if owns(obj.owner)])

    def stats(self) -> dict[str, Any]:
        largest = sorted(self.objects.items(), key=lambda kv: kv[1].size, reverse=True)[:10]
        return {
            "capacity": self.allocator.capacity,
            "used": self.allocator.used,
            "num_objects": len(self.objects),
            "spilled": len(self.spilled),
            "spilled_bytes": sum(obj.size for obj in self.spilled.values()),
            "spilled_total": self.spilled_total,
            "restored_total": self.restored_total,
            "largest": [[oid.hex(), obj.size, obj.owner] for oid, obj in largest],
        }

    def _free_if_unused(self, object_id: bytes, obj: StoredObject) -> None:
        if obj.released and not obj.readers:
            del self.objects[object_id]
            start, extent = self.allocator.free_merged(obj.offset)
            if obj.size >= self.reclaim_min:  # free space next to it goes back with it
                self._reclaim.append((start, extent))

    def _take_reclaim(self) -> list[tuple[int, int]]:
        ranges, self._reclaim = self._reclaim, []
        return ranges
