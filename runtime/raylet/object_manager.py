"""The object manager: copies of objects that live on other nodes, pulled in chunks.

Ray's ObjectManager. A reader asks its own raylet for objects by id (``GetObjects``), saying for
each one held elsewhere which raylets hold it (the primary's, then the secondary copies the
owner knows of), how large it is and who owns it. An object not in this node's store is
pulled: space is allocated here, and *lanes*, each a thread with its own connection to one
holder's chunk port (``chunk_channel``), ask for the object's bytes in chunks of
``CHUNK_BYTES`` (``ReadObjectChunk``), ``WINDOW`` of them in flight per lane, each received
straight into place. With one holder there are ``MIN_LANES`` lanes to it; with several, a lane
per holder (at most ``MAX_LANES``), and a faster holder takes more chunks. When a lane fails
(its holder died, or no longer has the object) its chunks go back to the others, and a pull
fails only when every holder has. The copy is sealed once the last chunk is in, kept as a
*secondary* copy (evicted before any primary is spilled), and its owner is told where it is
(``ObjectLocationAdded``), so later readers pull from it too. Readers waiting for it are then
answered as for any local object (pinned, by id).

Pulls of ``PROGRESS_BYTES`` or more tell the readers waiting for them how far they are
(``PullProgress``), so the kernel shows a bar while a large object arrives.

``Pull`` is the decision part (which lane asks for which chunks, what a failed lane gives
back, when the copy is whole) and has no I/O; ``chunk_channel`` carries it out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

__all__ = ["CHUNK_BYTES", "MAX_LANES", "MIN_LANES", "PROGRESS_BYTES", "WINDOW", "Pull"]

CHUNK_BYTES = 8 << 20  # Ray's default is 5 MiB; larger chunks cost fewer requests per GB
WINDOW = 3  # chunks in flight per lane
MIN_LANES = 2  # connections a pull opens even to a single holder
MAX_LANES = 4
PROGRESS_BYTES = 64 << 20  # pulls this large tell their readers how far they are


@dataclass(slots=True)
class Pull:
    """One object's transfer from the nodes that hold it, chunk by chunk."""

    object_id: bytes
    size: int
    holders: list[str]  # the holders' raylet addresses, the primary's first
    offset: int  # where the copy goes in this node's arena
    owner: str = ""  # the owner's address, told of the new copy
    chunk: int = CHUNK_BYTES
    window: int = WINDOW
    _pending: deque[tuple[int, int]] = field(default_factory=deque)
    in_flight: dict[Hashable, dict[int, int]] = field(default_factory=dict)  # lane -> chunks
    lane_holders: dict[Hashable, str] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)  # holders that failed a lane
    received: int = 0

    def __post_init__(self) -> None:
        if not self.holders:
            raise ValueError(f"a pull of {self.object_id.hex()} needs a holder")
        self._pending.extend((offset, min(self.chunk, self.size - offset))
                             for offset in range(0, self.size, self.chunk))

    @property
    def whole(self) -> bool:
        return self.received == self.size

    def live_holders(self) -> list[str]:
        return [holder for holder in self.holders if holder not in self.failed]

    def lanes(self, min_lanes: int = MIN_LANES, max_lanes: int = MAX_LANES) -> list[str]:
        """The holder of each lane to run now: every live holder, the first ones twice when
        there are fewer than ``min_lanes``; no more lanes than chunks left to ask for."""
        live = self.live_holders()
        if not live:
            return []
        count = min(max(min_lanes, len(live)), max_lanes, max(1, len(self._pending)))
        return [live[i % len(live)] for i in range(count)]

    def next_chunks(self, lane: Hashable, holder: str) -> list[tuple[int, int]]:
        """``(offset, size)`` of the chunks ``lane`` (reading from ``holder``) should ask
        for now, keeping ``window`` in flight on it."""
        mine = self.in_flight.setdefault(lane, {})
        self.lane_holders[lane] = holder
        out = []
        if holder in self.failed:
            return out
        while len(mine) < self.window and self._pending:
            offset, size = self._pending.popleft()
            mine[offset] = size
            out.append((offset, size))
        return out

    def chunk_arrived(self, lane: Hashable, offset: int) -> bool:
        """A chunk ``lane`` asked for is written into place; True once the whole object is."""
        size = self.in_flight.get(lane, {}).pop(offset, None)
        if size is None:
            raise ValueError(f"chunk at {offset} of {self.object_id.hex()} was not asked for "
                             "on this lane")
        self.received += size
        return self.whole

    def lane_failed(self, lane: Hashable, holder: str, holder_failed: bool = True) -> None:
        """``lane`` could not read from ``holder``: its chunks go back to be asked again, of
        another holder unless ``holder_failed`` is False (only the lane's connection went)."""
        if holder_failed:
            self.failed.add(holder)
        self._pending.extendleft(sorted(self.in_flight.pop(lane, {}).items(), reverse=True))

    def waiting_on(self) -> list[str]:
        """The holders with chunks of this pull in flight."""
        return sorted({self.lane_holders[lane] for lane, chunks in self.in_flight.items()
                       if chunks})

    def lane_done(self, lane: Hashable) -> bool:
        """``lane`` has nothing in flight and nothing left to ask for: it can end."""
        return not self.in_flight.get(lane) and not self._pending
