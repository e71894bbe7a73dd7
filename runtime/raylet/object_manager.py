"""The object manager: copies of objects that live on other nodes, pulled in chunks.

Ray's ObjectManager. A reader asks its own raylet for objects by id (``GetObjects``), saying for
each one held elsewhere which raylet holds it and how large it is (its payload names both). An
object not in this node's store is pulled from that raylet: space is allocated here, and a
thread asks for the object's bytes in chunks of ``CHUNK_BYTES`` (``ReadObjectChunk``), ``WINDOW``
of them in flight on one connection (``chunk_channel``), each received straight into place; the
copy is sealed once the last is in. Readers waiting for it are then answered as for any local
object (pinned, by id). The copy is secondary: it goes when its last reader unpins it; the
primary copy stays with the node that made it. The holder pins its copy while a pull reads it,
so the bytes cannot be freed or reused mid-transfer.

Pulls of ``PROGRESS_BYTES`` or more tell the readers waiting for them how far they are
(``PullProgress``), so the kernel shows a bar while a large object arrives.

``Pull`` is the decision part (which chunks to ask for next, when the copy is whole) and has no
I/O; ``chunk_channel.ChunkChannel`` carries it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CHUNK_BYTES", "PROGRESS_BYTES", "WINDOW", "Pull"]

CHUNK_BYTES = 4 << 20  # as Ray's object_manager_default_chunk_size (5 MiB), rounded to pages
WINDOW = 4  # chunks in flight per pull
PROGRESS_BYTES = 64 << 20  # pulls this large tell their readers how far they are


@dataclass(slots=True)
class Pull:
    """One object's transfer from the node that holds it, chunk by chunk."""

    object_id: bytes
    size: int
    source: str  # the holder's raylet address
    offset: int  # where the copy goes in this node's arena
    chunk: int = CHUNK_BYTES
    window: int = WINDOW
    _next: int = 0
    in_flight: set[int] = field(default_factory=set)
    received: int = 0

    def next_chunks(self) -> list[tuple[int, int]]:
        """``(offset, size)`` of the chunks to ask for now, keeping ``window`` in flight."""
        out = []
        while len(self.in_flight) < self.window and self._next < self.size:
            size = min(self.chunk, self.size - self._next)
            out.append((self._next, size))
            self.in_flight.add(self._next)
            self._next += size
        return out

    def chunk_arrived(self, offset: int, size: int) -> bool:
        """A chunk is written into place; True once the whole object is."""
        if offset not in self.in_flight:
            raise ValueError(f"chunk at {offset} of {self.object_id.hex()} was not asked for")
        self.in_flight.discard(offset)
        self.received += size
        return self.received == self.size and not self.in_flight
