"""Offset allocator for a node's fixed-size shared-memory arena.

The raylet owns one shared-memory arena per node (see :mod:`cellfleet._shm`) and hands out
regions of it to objects. :class:`ArenaAllocator` only does the bookkeeping: it maps
requested sizes to offsets inside ``[0, capacity)``. It performs no I/O and never touches
the memory itself.

Strategy: best fit (smallest free block that is large enough; lowest offset on ties), the
allocation is carved from the start of the chosen block, and freed blocks are coalesced
with free neighbours on both sides. Free blocks are indexed three ways:

* a sorted list of ``(size, offset)`` pairs searched with :mod:`bisect` (best-fit lookup),
* ``offset -> size`` (find the free block starting right after a freed block),
* ``end -> offset`` (find the free block ending right before a freed block).

``allocate`` and ``free`` are therefore O(log n) comparisons plus one list insert/delete
(a ``memmove`` of pointers, negligible in practice even for 10^5 blocks).
"""

from __future__ import annotations

import operator
from bisect import bisect_left, insort

__all__ = ["ArenaAllocator"]


class ArenaAllocator:
    """Best-fit allocator of aligned offsets inside an arena of fixed capacity.

    Every allocation is rounded up to a multiple of ``alignment`` (a request of 0 bytes
    still consumes one ``alignment``-sized block so that it gets a distinct offset), and
    every returned offset is a multiple of ``alignment``. The usable capacity is the given
    capacity rounded down to a multiple of ``alignment``.

    Not thread-safe: callers serialise access (the raylet does so on its event loop).
    """

    __slots__ = ("_alignment", "_allocated", "_by_end", "_by_size", "_by_start", "_capacity",
                 "_used")

    def __init__(self, capacity: int, alignment: int = 4096) -> None:
        """Create an allocator over ``[0, capacity)`` with everything free.

        :param capacity: arena size in bytes; rounded down to a multiple of ``alignment``.
        :param alignment: granularity of offsets and sizes, in bytes (positive).
        :raises ValueError: on a negative capacity or a non-positive alignment.
        """
        capacity = operator.index(capacity)
        alignment = operator.index(alignment)
        if alignment <= 0:
            raise ValueError(f"alignment must be positive, got {alignment}")
        if capacity < 0:
            raise ValueError(f"capacity must be non-negative, got {capacity}")
        self._alignment = alignment
        self._capacity = capacity - capacity % alignment
        self._used = 0
        self._by_size: list[tuple[int, int]] = []  # free blocks, sorted by (size, offset)
        self._by_start: dict[int, int] = {}  # free block offset -> size
        self._by_end: dict[int, int] = {}  # free block end offset -> offset
        self._allocated: dict[int, int] = {}  # allocated offset -> rounded size
        if self._capacity:
            self._add_free(0, self._capacity)

    # ------------------------------------------------------------------ properties

    @property
    def capacity(self) -> int:
        """Usable bytes managed by the allocator (a multiple of ``alignment``)."""
        return self._capacity

    @property
    def alignment(self) -> int:
        """Granularity of offsets and allocation sizes, in bytes."""
        return self._alignment

    @property
    def used(self) -> int:
        """Bytes currently allocated, counting rounded-up sizes."""
        return self._used

    @property
    def available(self) -> int:
        """Bytes currently free (possibly fragmented; see :attr:`largest_free_block`)."""
        return self._capacity - self._used

    @property
    def largest_free_block(self) -> int:
        """Size of the largest free block: the biggest request that can succeed now."""
        return self._by_size[-1][0] if self._by_size else 0

    @property
    def num_allocations(self) -> int:
        """Number of live allocations."""
        return len(self._allocated)

    # ------------------------------------------------------------------ operations

    def allocate(self, size: int) -> int | None:
        """Reserve ``size`` bytes and return the block's offset, or None if nothing fits.

        :param size: requested bytes (>= 0); rounded up to a multiple of ``alignment``,
            with a minimum of one ``alignment`` unit.
        :raises ValueError: if ``size`` is negative.
        """
        size = operator.index(size)
        if size < 0:
            raise ValueError(f"size must be non-negative, got {size}")
        align = self._alignment
        rounded = -(-size // align) * align if size else align
        by_size = self._by_size
        idx = bisect_left(by_size, (rounded, -1))
        if idx == len(by_size):
            return None
        block_size, offset = by_size.pop(idx)
        del self._by_start[offset]
        del self._by_end[offset + block_size]
        if block_size > rounded:
            self._add_free(offset + rounded, block_size - rounded)
        self._allocated[offset] = rounded
        self._used += rounded
        return offset

    def free(self, offset: int) -> int:
        """Release the block at ``offset`` and return its (rounded) size.

        The block is merged with the free blocks immediately before and after it.

        :raises KeyError: if ``offset`` is not the offset of a live allocation.
        """
        size = self._allocated[offset]  # KeyError for unknown offsets
        self.free_merged(offset)
        return size

    def free_merged(self, offset: int) -> tuple[int, int]:
        """Release the block at ``offset`` like :meth:`free`; return the ``(start, size)`` of
        the free block it became part of (for giving that memory back to the system).

        :raises KeyError: if ``offset`` is not the offset of a live allocation.
        """
        size = self._allocated.pop(offset)
        self._used -= size
        start, end = offset, offset + size
        right = self._by_start.get(end)
        if right is not None:
            self._remove_free(end, right)
            end += right
        left = self._by_end.get(start)
        if left is not None:
            self._remove_free(left, start - left)
            start = left
        self._add_free(start, end - start)
        return start, end - start

    def size_of(self, offset: int) -> int:
        """Return the (rounded) size of the live allocation at ``offset``.

        :raises KeyError: if ``offset`` is not the offset of a live allocation.
        """
        return self._allocated[offset]

    def __contains__(self, offset: object) -> bool:
        """Whether ``offset`` is the offset of a live allocation."""
        return offset in self._allocated

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(capacity={self._capacity}, alignment={self._alignment},"
                f" used={self._used}, allocations={len(self._allocated)},"
                f" free_blocks={len(self._by_size)}, largest_free={self.largest_free_block})")

    # ------------------------------------------------------------------ internals

    def _add_free(self, offset: int, size: int) -> None:
        insort(self._by_size, (size, offset))
        self._by_start[offset] = size
        self._by_end[offset + size] = offset

    def _remove_free(self, offset: int, size: int) -> None:
        by_size = self._by_size
        del by_size[bisect_left(by_size, (size, offset))]
        del self._by_start[offset]
        del self._by_end[offset + size]
