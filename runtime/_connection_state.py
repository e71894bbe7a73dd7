"""When a connection is wedged, when to ping its peer, when a request is late: no I/O here.

``ConnectionWatch`` is fed what happened on one connection (a request sent or answered, bytes
written, the connection closing, a tick of the clock with what was heard and drained since the
last one) and answers with actions for the asyncio layer to carry out: ``SendPing``, ``Expire`` a
request, ``Close`` the connection with a reason. It never reads a clock itself.

The rules, with the default ``Limits``:

- Outbox: above ``high_water`` (1 MiB) unread by the peer the connection is paused (senders
  that can wait ``await drain()``); it is closed as wedged when the backlog passes
  ``max_outbox`` (256 MiB, so memory stays bounded). A peer that merely reads nothing for a
  while (a stopped driver receiving logs) is left connected under that bound, unless it owes
  answers (below). A connection being closed whose peer takes nothing of its backlog for
  ``stall_s`` (15 s) is aborted instead of waiting for it forever.
- Keepalive: while requests (or answers the role awaits) are outstanding and nothing has been
  heard for ``ping_idle_s`` (5 s), the peer is pinged; a peer that sends nothing at all within
  ``ping_timeout_s`` (10 s) of the ping is closed as unresponsive. A paused (SIGSTOP) or hung
  peer with requests outstanding is therefore noticed within ``detection_bound_s`` (15 s, the
  two added) of the last bytes it sent; a peer that takes bytes of a full outbox counts as
  heard. While answers are awaited the layer ticks every
  ``tick_s`` (1 s) and at each moment a rule falls due; an idle connection gets no ticks and
  no pings, so it costs nothing.
- Request timeouts: a request sent with a timeout expires at its deadline, once, and leaves
  no entry behind; the deadline heap is compacted so answered requests do not pile up in it.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Action", "Close", "ConnectionWatch", "Expire", "Limits",
           "SendPing"]

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds one connection lives by (bytes and seconds)."""

    high_water: int = 1 * MiB
    low_water: int = MiB // 4
    max_outbox: int = 256 * MiB
    stall_s: float = 15.0
    ping_idle_s: float = 5.0
    ping_timeout_s: float = 10.0
    tick_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.low_water <= self.high_water <= self.max_outbox:
            raise ValueError("connection limits need 0 <= low_water <= high_water <= max_outbox,"
                             f" got {self.low_water}, {self.high_water}, {self.max_outbox}")
        for name in ("stall_s", "ping_idle_s", "ping_timeout_s", "tick_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"connection limit {name} must be a positive number of seconds")

    @property
    def detection_bound_s(self) -> float:
        """How long a silent peer with requests outstanding can go unnoticed, at most."""
        return self.ping_idle_s + self.ping_timeout_s


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class SendPing:
    """Write a ping: the peer answers with a pong if it is there."""


@dataclass(frozen=True, slots=True)
class Expire:
    """Fail request ``request_id`` (a ``what``): no reply within ``timeout`` seconds."""

    request_id: int
    what: str
    timeout: float


@dataclass(frozen=True, slots=True)
class Close:
    """Abort the connection; ``reason`` says why, for the log and for every pending request."""

    reason: str


Action = SendPing | Expire | Close


_WHAT_TO_DO = ("; the process there is paused, hung, not reading or its host unreachable "
               "(see its log; a stopped one resumes with kill -CONT)")


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


class ConnectionWatch:
    """The liveness, outbox and timeout decisions of one connection to ``peer``."""

    def __init__(self, peer: str, limits: Limits = DEFAULT_LIMITS) -> None:
        self.peer = peer
        self.limits = limits
        self.closed: str | None = None  # the reason, once a Close was returned
        self.pings = 0  # sent in all
        self._outstanding: dict[int, tuple[str, float, float]] = {}  # id -> what, deadline, timeout
        self._deadlines: list[tuple[float, int]] = []  # heap; may hold answered ids
        self._awaited = 0
        self._heard_at = 0.0  # no later than the last bytes heard
        self._last_tick = 0.0
        self._ping_at: float | None = None
        self._closing = False
        self._drained = 0
        self._progress_at = 0.0

    # -- events ---------------------------------------------------------------------------

    def request_sent(self, request_id: int, what: str, now: float,
                     timeout: float | None = None) -> None:
        """A request went out; with a finite ``timeout`` it expires ``timeout`` s from now."""
        if not (self._outstanding or self._awaited or self._closing):
            self._start_watching(now)
        if timeout is None:
            self._outstanding[request_id] = (what, math.inf, math.inf)
        else:
            deadline = now + timeout
            self._outstanding[request_id] = (what, deadline, timeout)
            heapq.heappush(self._deadlines, (deadline, request_id))

    def answered(self, request_id: int) -> None:
        """The reply to ``request_id`` came (or its caller stopped waiting for it)."""
        if (self._outstanding.pop(request_id, None) is not None
                and len(self._deadlines) > 2 * len(self._outstanding) + 64):
            self._compact()

    def awaiting(self, count: int, now: float) -> None:
        """The serving role awaits ``count`` answers that come as one-way messages."""
        if count and not self.watching:
            self._start_watching(now)
        self._awaited = max(0, count)

    def closing(self, now: float, drained: int) -> None:
        """The connection is being closed once its backlog is written."""
        if not self._closing:
            if not self.watching:
                self._start_watching(now)
            self._closing = True
            self._progress_at, self._drained = now, drained

    def flushed(self, backlog: int) -> Close | None:
        """Bytes were written and ``backlog`` remain unread by the peer: is it over the bound?"""
        if self.closed is None and backlog > self.limits.max_outbox:
            return self._close(
                f"{self.peer} has not read {_mib(backlog)} queued for it, over the "
                f"{_mib(self.limits.max_outbox)} outbox bound: closed as wedged{_WHAT_TO_DO}")
        return None

    def tick(self, now: float, *, heard: bool, backlog: int, drained: int) -> list[Action]:
        """Time passed; ``heard``: bytes came since the last tick; ``drained``: bytes the
        peer has taken in all (written into the socket), ``backlog``: bytes it has not."""
        if self.closed is not None:
            return []
        actions: list[Action] = []
        limits = self.limits
        if drained > self._drained:
            if backlog:  # its buffers are full, so taking bytes means reading
                heard = True
            self._drained, self._progress_at = drained, now
        elif self._closing and backlog and now >= self._progress_at + limits.stall_s:
            return [self._close(  # (the form next_tick uses)
                f"{self.peer} read nothing of the {_mib(backlog)} queued for it in "
                f"{limits.stall_s:g} s after the connection was closed: aborted it{_WHAT_TO_DO}")]
        bound = self.flushed(backlog)
        if bound is not None:
            return [bound]
        if heard:  # some time since the last tick, so no later than it
            self._heard_at, self._ping_at = self._last_tick, None
        self._last_tick = now
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, request_id = heapq.heappop(self._deadlines)
            entry = self._outstanding.get(request_id)
            if entry is not None and entry[1] == deadline:
                del self._outstanding[request_id]
                actions.append(Expire(request_id, entry[0], entry[2]))
        if self._outstanding or self._awaited:
            if self._ping_at is not None and now >= self._ping_at + limits.ping_timeout_s:
                waiting = ", ".join(sorted({what for what, _, _ in self._outstanding.values()}))
                return [*actions, self._close(
                    f"{self.peer} did not answer a keepalive ping within "
                    f"{limits.ping_timeout_s:g} s while {len(self._outstanding)} requests "
                    f"({waiting or 'none'}) and {self._awaited} answers were outstanding: "
                    f"closed as unresponsive{_WHAT_TO_DO}")]
            if self._ping_at is None and now >= self._heard_at + limits.ping_idle_s:
                self._ping_at = now
                self.pings += 1
                actions.append(SendPing())
        else:
            self._ping_at = None
        return actions

    # -- what the asyncio layer asks ------------------------------------------------------

    @property
    def watching(self) -> bool:
        """Whether the connection needs ticks: answers awaited, or closing."""
        return bool(self._outstanding or self._awaited or self._closing)

    @property
    def awaited(self) -> int:
        """One-way answers the role said it awaits (see ``awaiting``)."""
        return self._awaited

    @property
    def outstanding(self) -> int:
        """Requests sent and neither answered nor expired."""
        return len(self._outstanding)

    def next_tick(self, now: float) -> float | None:
        """When the layer should call ``tick`` next (None: only after the next event)."""
        if self.closed is not None:
            return None
        limits = self.limits
        when = now + limits.tick_s if self.watching else math.inf
        if self._deadlines:
            when = min(when, self._deadlines[0][0])
        if self._outstanding or self._awaited:
            due = (self._heard_at + limits.ping_idle_s if self._ping_at is None
                   else self._ping_at + limits.ping_timeout_s)
            when = min(when, max(due, now))
        if self._closing:
            when = min(when, max(self._progress_at + limits.stall_s, now))
        return None if when == math.inf else when

    def _start_watching(self, now: float) -> None:
        """Silence counts from when an answer is first awaited."""
        self._heard_at = self._last_tick = now
        self._ping_at = None

    def _close(self, reason: str) -> Close:
        self.closed = reason
        self._outstanding.clear()
        self._deadlines.clear()
        return Close(reason)

    def _compact(self) -> None:
        """Drop answered ids from the deadline heap (once they outnumber the live ones)."""
        self._deadlines = [(d, r) for d, r in self._deadlines
                           if r in self._outstanding and self._outstanding[r][1] == d]
        heapq.heapify(self._deadlines)
