"""The node's shared-memory arena (a file in ``/dev/shm``) as seen by any process on the node.

One process (the raylet) :meth:`SharedArena.create`\\ s the arena; every process on the node
:meth:`SharedArena.attach`\\ es to it. Offsets inside the arena are handed out by
:class:`cellfleet.raylet.allocator.ArenaAllocator`; this module only moves bytes.

* Writes go through one writable ``MAP_SHARED`` mapping of the whole arena, created once;
  each chunk is copied with a slice assignment (a ``memcpy``).
* Reads are zero-copy: :meth:`SharedArena.read_view` returns a read-only memoryview whose
  memory *is* the shared memory, a slice of that same arena-wide mapping. Each read view is
  exported by an object of its own (a ``ctypes`` array over the mapping) so that the arena can
  report, through ``on_release``, when the last memoryview / numpy array derived from it has
  been garbage collected (the raylet uses this to unpin objects).

Cost: one mapping and two file descriptors per arena per process, however many views are
alive (a view costs no descriptor and no mapping of its own, so holding thousands of objects
does not run into ``RLIMIT_NOFILE``).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import weakref
from collections.abc import Callable, Iterable

__all__ = ["SHM_DIR", "SharedArena"]

SHM_DIR = "/dev/shm"
Buffer = bytes | bytearray | memoryview


def _path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid shared-memory name: {name!r}")
    return os.path.join(SHM_DIR, name)


COPY_SLICE = 64 << 20  # a copy reporting progress reports every this many bytes
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14+
# Only writes this large fault their pages in first: smaller objects mostly land on pages
# already in use (freed space keeps its pages), where the call costs ~18% of the copy.
_PREFAULT_BYTES = 256 << 20
_MADV_REMOVE = getattr(mmap, "MADV_REMOVE", 9)


def _prefault(mm: mmap.mmap, offset: int, size: int) -> None:
    """Fault in the pages of a range about to be written, in one call.

    A page of shared memory written for the first time costs a fault; the kernel allocating
    a whole range at once is about 1.5x faster than faulting page by page during the copy.
    Where the kernel lacks it, this is a no-op.
    """
    start = offset - offset % mmap.PAGESIZE
    try:
        mm.madvise(_MADV_POPULATE_WRITE, start, offset + size - start)
    except (OSError, ValueError):
        pass


class SharedArena:
    """A fixed-size shared-memory file mapped into this process.

    Not thread-safe with respect to :meth:`close`; the data-moving methods may be called
    from several threads as long as they touch disjoint regions.
    """

    __slots__ = ("__weakref__", "_capacity", "_fd", "_mm", "_name", "_window")

    def __init__(self, name: str, fd: int, capacity: int) -> None:
        """Wrap an open descriptor of ``/dev/shm/<name>``; use :meth:`create` / :meth:`attach`.

        Takes ownership of ``fd`` (closed by :meth:`close`).
        """
        self._name = name
        self._capacity = capacity
        self._fd: int | None = fd
        self._mm: mmap.mmap | None = mmap.mmap(fd, capacity, access=mmap.ACCESS_WRITE)
        # The type of a whole-arena window; one instance per read view (see read_view).
        self._window = ctypes.c_ubyte * capacity

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, name: str, capacity: int) -> SharedArena:
        """Create ``/dev/shm/<name>`` (exclusively, mode 0600) with ``capacity`` bytes.

        The file is sized with ``ftruncate`` only; no page is touched, so memory is consumed
        lazily as regions are first written.

        :raises FileExistsError: if the name is taken.
        :raises ValueError: on an invalid name or a non-positive capacity.
        """
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        path = _path(name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # independent of the umask
            os.ftruncate(fd, capacity)
            return cls(name, fd, capacity)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise

    @classmethod
    def attach(cls, name: str) -> SharedArena:
        """Open the existing arena ``/dev/shm/<name>``; its capacity is the file size.

        :raises FileNotFoundError: if no such arena exists.
        """
        fd = os.open(_path(name), os.O_RDWR)
        try:
            capacity = os.fstat(fd).st_size
            if capacity <= 0:
                raise ValueError(f"shared-memory file {name!r} is empty")
            return cls(name, fd, capacity)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        """Close the descriptor and the arena-wide mapping. Idempotent.

        Read views (and writable views) already handed out remain valid for as long as
        they live; the memory itself is released by :meth:`unlink` plus the last unmap.
        """
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # views still export it; it is unmapped when the last one is gone
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def unlink(self) -> None:
        """Remove ``/dev/shm/<name>``; mappings that still exist stay valid."""
        os.unlink(_path(self._name))

    def __enter__(self) -> SharedArena:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._mm is None else "open"
        return f"SharedArena(name={self._name!r}, capacity={self._capacity}, {state})"

    # ------------------------------------------------------------------ properties

    @property
    def name(self) -> str:
        """File name of the arena inside ``/dev/shm``."""
        return self._name

    @property
    def capacity(self) -> int:
        """Arena size in bytes."""
        return self._capacity

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._mm is None

    # ------------------------------------------------------------------ data

    def _check(self, offset: int, size: int) -> mmap.mmap:
        mm = self._mm
        if mm is None:
            raise ValueError("SharedArena is closed")
        if offset < 0 or size < 0 or offset + size > self._capacity:
            raise ValueError(
                f"range [{offset}, {offset + size}) outside arena of {self._capacity} bytes")
        return mm

    def write(self, offset: int, chunks: Iterable[Buffer],
              progress: Callable[[int, int], None] | None = None) -> None:
        """Copy ``chunks`` back to back into the arena starting at ``offset``.

        Each chunk is any C-contiguous buffer (bytes, memoryview, numpy array, ...). With
        ``progress``, the copy goes in slices of ``COPY_SLICE`` bytes and ``progress(done,
        total)`` is called after each.

        :raises ValueError: if the data does not fit in the arena or the arena is closed.
        """
        views = [c if isinstance(c, memoryview) else memoryview(c) for c in chunks]
        total = sum(v.nbytes for v in views)
        mm = self._check(offset, total)
        if total >= _PREFAULT_BYTES:
            _prefault(mm, offset, total)
        pos = offset
        for v in views:
            n = v.nbytes
            if not n:
                continue
            if progress is None:
                mm[pos:pos + n] = v
            else:
                flat = v.cast("B") if v.ndim != 1 or v.format != "B" else v
                for start in range(0, n, COPY_SLICE):
                    piece = flat[start:start + COPY_SLICE]
                    mm[pos + start:pos + start + piece.nbytes] = piece
                    progress(pos + start + piece.nbytes - offset, total)
            pos += n

    def discard(self, offset: int, size: int) -> None:
        """Give the pages wholly inside ``[offset, offset + size)`` back to the system.

        For freed space: the file keeps its size, but the range no longer holds memory
        (``MADV_REMOVE`` punches a hole in the ``/dev/shm`` file) and reads back as zeros.
        Pages only partly inside the range are kept. Where the kernel refuses, a no-op.
        """
        mm = self._check(offset, size)
        page = mmap.PAGESIZE
        start = -(-offset // page) * page
        end = (offset + size) // page * page
        if end <= start:
            return
        try:
            mm.madvise(_MADV_REMOVE, start, end - start)
        except (OSError, ValueError):
            pass

    def writable_view(self, offset: int, size: int) -> memoryview:
        """Return a writable memoryview of ``[offset, offset + size)`` (zero-copy).

        For producers that serialise directly into the arena. Release it (or drop it)
        before relying on :meth:`close` to unmap the arena in this process.
        """
        mm = self._check(offset, size)
        return memoryview(mm)[offset:offset + size]

    def read_view(self, offset: int, size: int,
                  on_release: Callable[[], None] | None = None) -> memoryview:
        """Return a read-only, zero-copy memoryview of ``[offset, offset + size)``.

        The view is a slice of the arena-wide mapping, exported by a window object of its
        own. When that window is garbage collected - i.e. once this memoryview and everything
        derived from it (slices, ``numpy.frombuffer`` arrays, ...) are gone - ``on_release``
        is called exactly once, from whichever thread drops the last reference. It is not
        called at interpreter exit. Assigning into the view raises ``TypeError``; numpy arrays
        built over it are not writeable.

        :raises ValueError: if the range lies outside the arena or the arena is closed.
        """
        mm = self._check(offset, size)
        # The window keeps the mapping exported (so mapped) for as long as it lives; every
        # memoryview derived from the one returned keeps the window alive.
        window = self._window.from_buffer(mm)
        if on_release is not None:
            weakref.finalize(window, on_release).atexit = False
        return memoryview(window).cast("B")[offset:offset + size].toreadonly()
