"""The asyncio pump around ``_protocol`` and ``_messages``: connections, servers, requests.

Every process role (GCS, raylet, core worker) serves a table ``{message class: handler}``.
A handler is called as ``handler(connection, message)`` and returns the reply value, or an
awaitable of it, for a request; one-way messages ignore the return value. Authentication
happens here, once, before any handler sees a message; an unauthenticated or malformed peer
is logged and dropped and the server keeps serving.

Writes are coalesced: everything sent during one event-loop iteration goes out in one
``write`` call, which is what keeps pipelined task traffic cheap. ``send`` stays a plain
synchronous call; what a connection does about a peer that stops reading or answering is
decided by its ``ConnectionWatch`` (``_connection_state``, which has the numbers): past the
outbox's high-water mark senders that can wait ``await drain()``, past its bound the connection
is closed as wedged; a peer silent while answers are awaited is pinged, and closed as
unresponsive if it stays silent; ``request(message, timeout=...)`` fails a late request with
``TimeoutError`` and leaves nothing behind. Every TCP socket also has kernel keepalive on, for
peers whose host or network vanishes while the connection is idle.

A listener holds at most ``MAX_UNAUTHENTICATED`` connections that have not finished the
handshake, each for at most ``HANDSHAKE_TIMEOUT_S``; further ones are closed at once, so a
flood of idle connections cannot use up the process's file descriptors. Refusals are logged
at most once per ``REFUSAL_LOG_INTERVAL_S`` with a count of the ones not logged.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import _messages as m
from . import exceptions
from ._connection_state import DEFAULT_LIMITS, Close, ConnectionWatch, Expire, Limits, SendPing
from ._messages import BULK_BYTES, ErrorReply, Message, Reply, decode, encode_parts
from ._protocol import (
    PING_FRAME,
    PONG_FRAME,
    ClientHandshake,
    FrameDecoder,
    ServerHandshake,
    encode_frame,
    frame_header,
    new_server_id,
)

__all__ = ["REQUEST_TIMEOUTS", "Connection", "HandlerTable", "Limits", "Listener", "connect",
           "serve"]

logger = logging.getLogger(__name__)

HandlerTable = dict[type[Message], Callable[["Connection", Any], Any]]
HANDSHAKE_TIMEOUT_S = 3.0
MAX_UNAUTHENTICATED = 128
LISTEN_BACKLOG = 512
REFUSAL_LOG_INTERVAL_S = 10.0

# Kernel keepalive on every TCP socket: an idle connection whose peer's host or network is
# gone is dropped after 10 + 3 x 5 = 25 s; data left unacknowledged for 30 s drops it too
# (Linux would otherwise retransmit for about 15 minutes). A paused process's kernel still
# answers these probes: the application ping (``ConnectionWatch``) notices paused peers.
_TCP_OPTIONS = (("TCP_NODELAY", 1), ("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5),
                ("TCP_KEEPCNT", 3), ("TCP_USER_TIMEOUT", 30_000))

_QUICK_S = 60.0
# How long a request may wait for its reply when the caller gives no timeout: messages a
# healthy peer answers at once. The others (WaitActor, RequestLease, GetObjects,
# GetObjectStatus, ...) may rightly wait for a long time: they wait as long as the peer answers
# keepalive pings. ``request(message, timeout=math.inf)`` waits without limit.
REQUEST_TIMEOUTS: dict[type[Message], float] = {
    message: _QUICK_S for message in (
        m.RegisterNode, m.Heartbeat, m.GetNodes, m.RegisterJob, m.FinishJob, m.ListJobs,
        m.ExportFunction, m.GetFunction, m.KvPut, m.KvGet, m.KvDelete, m.KvKeys, m.ListTasks,
        m.ListObjects, m.SummarizeTasks, m.ListTaskChanges, m.ListTaskGroups, m.GetNamedActor,
        m.ListActors, m.GetTableStats, m.RegisterClient, m.ReturnLease, m.GetNodeStats,
        m.AssignGpus)
}


def _tune(sock: socket.socket) -> None:
    """No Nagle delay, and kernel keepalive (``_TCP_OPTIONS``) where the platform has it."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _TCP_OPTIONS:
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _address_of(sockaddr: Any) -> str:
    """``host:port`` of a socket address, the form both handshake sides bind proofs to."""
    if isinstance(sockaddr, tuple):
        host, port = sockaddr[0], sockaddr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(sockaddr)


class Listener:
    """What one serving port shares among its connections: identity, admission, refusal log."""

    def __init__(self, server_id: bytes | None = None) -> None:
        self.server_id = server_id or new_server_id()
        self.refused = 0
        self._handshaking: dict[Connection, None] = {}  # oldest first
        self._unlogged = 0
        self._last_log = -REFUSAL_LOG_INTERVAL_S

    @property
    def unauthenticated(self) -> int:
        """Connections accepted that have not finished the handshake."""
        return len(self._handshaking)

    def admit(self, conn: Connection) -> None:
        """Let ``conn`` start the handshake; when too many are waiting, drop the oldest.

        An honest peer answers the challenge within a round trip, so the oldest waiting
        connection is the likeliest to be idle, and a flood cannot keep newcomers out.
        """
        if len(self._handshaking) >= MAX_UNAUTHENTICATED:
            oldest = next(iter(self._handshaking))
            self.leave(oldest)
            self.refuse(oldest.peer, f"more than {MAX_UNAUTHENTICATED} connections "
                                     "waiting in the handshake; dropped the oldest")
            oldest.abort()
        self._handshaking[conn] = None

    def leave(self, conn: Connection) -> None:
        """``conn`` finished, failed or closed: it no longer counts as waiting."""
        self._handshaking.pop(conn, None)

    def refuse(self, peer: str, why: object) -> None:
        """Count a refused peer; log it unless a refusal was logged very recently."""
        self.refused += 1
        now = time.monotonic()
        if now - self._last_log < REFUSAL_LOG_INTERVAL_S:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more refused since the last report)" if self._unlogged else ""
        logger.warning("refused %s: %s%s", peer, why, more)
        self._last_log, self._unlogged = now, 0


class Connection(asyncio.Protocol):
    """One authenticated, framed, message-level connection (either side).

    ``limits`` bounds its outbox and says when its peer counts as gone (``Limits``).
    """

    def __init__(
        self,
        token: bytes,
        handlers: HandlerTable,
        *,
        server_side: bool,
        on_close: Callable[[Connection], None] | None = None,
        listener: Listener | None = None,
        expect_id: bytes | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._handlers = handlers
        self._server_side = server_side
        self._token = token
        self._listener = listener
        self._expect_id = expect_id
        self._trusted = False
        self._handshake: ServerHandshake | ClientHandshake | None = None
        self._decoder = FrameDecoder()
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._out: list[bytes] = []
        self._large_queued = False  # a bulk payload (BULK_BYTES or more) is in _out
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._on_close = on_close
        self._watch = ConnectionWatch("?", limits)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._heard = False  # bytes came since the last tick
        self._written = 0  # bytes handed to the transport in all
        self._queued = 0  # bytes in ``_out``
        self._flush_at = limits.high_water
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        self._close_reason = ""
        self.authenticated: asyncio.Future[None] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.peer = "?"
        self.server_id = b""  # the server process's identity, on the client side
        self.state: Any = None  # what the serving role attaches to this peer

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = self._watch.peer = _address_of(peer)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            _tune(sock)
        limits = self._watch.limits
        self._transport.set_write_buffer_limits(  # type: ignore[union-attr]
            high=limits.high_water, low=limits.low_water)
        if not self._server_side:
            self._handshake = ClientHandshake(self._token, _address_of(peer), self._expect_id)
            return
        listener = self._listener or Listener()
        self._listener = listener
        listener.admit(self)
        self._handshake = ServerHandshake(
            self._token, _address_of(transport.get_extra_info("sockname")), listener.server_id)
        transport.write(self._handshake.initial_bytes())
        self._loop.call_later(HANDSHAKE_TIMEOUT_S, self._handshake_deadline)

    def data_received(self, data: bytes) -> None:
        self._heard = True
        if not self._trusted:
            data = self._advance_handshake(data)
            if not data:
                return
        try:
            decoder = self._decoder
            frames = decoder.feed(data)
            if decoder.pings:
                decoder.pings = 0
                self._transport.write(PONG_FRAME)  # type: ignore[union-attr]
            for frame in frames:
                message, request_id = decode(frame)
                self._dispatch(message, request_id)
        except exceptions.ProtocolError as exc:
            logger.warning("dropping %s: %s", self.peer, exc)
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave_handshake()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._close_reason and exc is not None:
            self._close_reason = str(exc)
        error = self._closed_error()
        if not self.authenticated.done():
            self.authenticated.set_exception(
                exceptions.AuthenticationError(
                    f"{self.peer} closed the connection during the token handshake."
                )
            )
            self.authenticated.exception()  # mark retrieved
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)
        if self._on_close is not None:
            self._on_close(self)

    # -- handshake ------------------------------------------------------------------------

    def _advance_handshake(self, data: bytes) -> bytes:
        handshake = self._handshake
        try:
            reply = handshake.receive_data(data)  # type: ignore[union-attr]
        except exceptions.AuthenticationError as exc:
            if self._listener is not None:
                self._listener.refuse(self.peer, exc)
            else:
                logger.warning("could not connect to %s: %s", self.peer, exc)
            if not self.authenticated.done():
                self.authenticated.set_exception(exc)
                self.authenticated.exception()
            self.abort()
            return b""
        if reply:
            self._transport.write(reply)  # type: ignore[union-attr]
        if not handshake.done:  # type: ignore[union-attr]
            return b""
        self._handshake = None
        self._trusted = True
        if isinstance(handshake, ClientHandshake):
            self.server_id = handshake.server_id
        self._leave_handshake()
        self.authenticated.set_result(None)
        return handshake.leftover  # type: ignore[union-attr]

    def _leave_handshake(self) -> None:
        if self._listener is not None:
            self._listener.leave(self)

    def _handshake_deadline(self) -> None:
        if not self._trusted and self.is_open:
            self._listener.refuse(  # type: ignore[union-attr]
                self.peer, f"no handshake within {HANDSHAKE_TIMEOUT_S}s")
            self.abort()

    # -- dispatch -------------------------------------------------------------------------

    def _dispatch(self, message: Message, request_id: int) -> None:
        if type(message) is Reply or type(message) is ErrorReply:
            fut = self._pending.pop(request_id, None)
            if fut is None:
                return
            self._watch.answered(request_id)
            if fut.done():
                return
            if type(message) is Reply:
                fut.set_result(message.value)
            else:
                fut.set_exception(_error_from_reply(message))
            return
        handler = self._handlers.get(type(message))
        if handler is None:
            if request_id:
                self.send(ErrorReply("ProtocolError", f"unsupported {type(message).__name__}"),
                          request_id)
            return
        try:
            result = handler(self, message)
        except Exception as exc:  # a handler's failure goes back to the requester
            if request_id:
                self.send(ErrorReply(type(exc).__name__, str(exc)), request_id)
            else:
                logger.exception("handler for %s failed", type(message).__name__)
            return
        if result is not None and inspect.isawaitable(result):
            self._loop.create_task(self._reply_later(result, request_id))
        elif request_id:
            self.send(Reply(result), request_id)

    async def _reply_later(self, result: Awaitable[Any], request_id: int) -> None:
        try:
            value = await result
        except Exception as exc:
            if request_id:
                self.send(ErrorReply(type(exc).__name__, str(exc)), request_id)
            else:
                logger.exception("handler failed")
            return
        if request_id:
            self.send(Reply(value), request_id)

    # -- sending --------------------------------------------------------------------------

    def send(self, message: Message, request_id: int = 0) -> None:
        """Queue a message; everything queued in one loop iteration leaves in one write.

        Never blocks: past the high-water mark the queue is written at once, so the outbox
        bound holds even for a burst queued within one loop iteration.
        """
        if self._transport is None or self._transport.is_closing():
            return
        parts = encode_parts(message, request_id)
        out = self._out
        if len(parts) == 1:
            frame = encode_frame(parts[0])
            if not out:
                self._loop.call_soon(self._flush)
            out.append(frame)
            self._queued += len(frame)
            if self._queued > self._flush_at:
                self._flush()
            return
        # A bulk payload (an object chunk) leaves at once, uncopied: the buffer it views may
        # be reused once the handler that made it has returned.
        size = sum(map(len, parts))
        out.append(frame_header(size))
        out.extend(parts)
        self._queued += size + 4
        self._large_queued = True
        self._flush()

    def _flush(self) -> None:
        out, self._out, self._queued = self._out, [], 0
        transport = self._transport
        if out and transport is not None and not transport.is_closing():
            if self._large_queued:
                self._large_queued = False
                self._write_runs(transport, out)
            else:
                data = b"".join(out)
                self._written += len(data)
                transport.write(data)
            if self._paused:  # only a paused outbox can be over its bound
                close = self._watch.flushed(transport.get_write_buffer_size())
                if close is not None:
                    self._carry_out(close)

    def _write_runs(self, transport: asyncio.Transport, out: list[bytes]) -> None:
        """Write small frames joined, bulk payloads each on their own (no copy)."""
        small: list[bytes] = []
        for item in out:
            if len(item) >= BULK_BYTES:
                if small:
                    transport.write(b"".join(small))
                    small = []
                transport.write(item)
            else:
                small.append(item)
            self._written += len(item)
        if small:
            transport.write(b"".join(small))

    def request(self, message: Message, timeout: float | None = None) -> asyncio.Future:
        """Send a request; the future resolves with the reply value or raises its error.

        With no ``timeout`` the message's default applies (``REQUEST_TIMEOUTS``; none for
        messages that may rightly wait long); ``math.inf`` waits as long as the peer is alive.
        A request with no reply in time fails with ``TimeoutError``; one whose peer goes
        silent, stops reading or closes fails with ``ConnectionError`` saying why.
        """
        if timeout is None:
            timeout = REQUEST_TIMEOUTS.get(type(message))
        elif not timeout > 0:
            raise ValueError(f"a request timeout is a positive number of seconds, not {timeout}")
        elif timeout == math.inf:
            timeout = None
        fut = self._loop.create_future()
        if self._transport is None or self._transport.is_closing():
            fut.set_exception(self._closed_error())
            return fut
        request_id = next(self._ids)
        self._pending[request_id] = fut
        now = self._loop.time()
        self._watch.request_sent(request_id, type(message).__name__, now, timeout)
        self.send(message, request_id)
        self._arm_by(now + min(self._watch.limits.tick_s, timeout or math.inf), now)
        return fut

    async def drain(self) -> None:
        """Wait until the peer has read its backlog down to the low-water mark.

        Backpressure for senders that can wait (``send`` itself never blocks); raises
        ``ConnectionError`` if the connection closes first.
        """
        if self._paused and self.is_open:
            if self._drained is None or self._drained.done():
                self._drained = self._loop.create_future()
            await asyncio.shield(self._drained)
        if not self.is_open:
            raise self._closed_error()

    @property
    def awaiting(self) -> int:
        """Answers the serving role awaits from the peer as one-way messages (pushed tasks'
        results, say); while nonzero a silent peer is pinged like one owing a reply."""
        return self._watch.awaited

    @awaiting.setter
    def awaiting(self, count: int) -> None:
        now = self._loop.time()
        self._watch.awaiting(count, now)
        if count and self.is_open:
            self._arm_by(now + self._watch.limits.tick_s, now)

    # -- the watch: outbox, keepalive, timeouts --------------------------------------------

    def pause_writing(self) -> None:
        """The transport's buffer passed the high-water mark: the peer reads slower than we
        write, or not at all."""
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _backlog(self) -> int:
        transport = self._transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def _arm_by(self, when: float, now: float) -> None:
        """Make sure a tick comes no later than ``when`` (cheap when one already does)."""
        if self._timer is None or when < self._timer_at:
            self._arm(now)

    def _arm(self, now: float) -> None:
        when = self._watch.next_tick(now)
        if when is None or (self._timer is not None and self._timer_at <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = self._loop.call_at(when, self._tick), when

    def _tick(self) -> None:
        self._timer = None
        if self._transport is None or self.closed.done():
            return  # closing still counts: close() waits for a backlog a wedged peer never takes
        abandoned = [rid for rid, fut in self._pending.items() if fut.done()]
        for request_id in abandoned:  # callers that stopped waiting (cancelled futures)
            del self._pending[request_id]
            self._watch.answered(request_id)
        now = self._loop.time()
        heard, self._heard = self._heard, False
        backlog = self._backlog()
        for action in self._watch.tick(now, heard=heard, backlog=backlog,
                                       drained=self._written - backlog):
            self._carry_out(action)
        if not self.closed.done():
            self._arm(now)

    def _carry_out(self, action: SendPing | Expire | Close) -> None:
        if type(action) is SendPing:
            if self.is_open:
                self._transport.write(PING_FRAME)  # type: ignore[union-attr]
        elif type(action) is Expire:
            fut = self._pending.pop(action.request_id, None)
            if fut is not None and not fut.done():
                fut.set_exception(TimeoutError(
                    f"{action.what} sent to {self.peer} got no reply within "
                    f"{action.timeout:g} s: the process there is busy, stuck or paused (one "
                    "that died would have closed the connection); see its log, or pass a "
                    "larger timeout="))
        else:
            self._close_reason = action.reason  # type: ignore[union-attr]
            logger.warning("%s", self._close_reason)
            self.abort()

    def _closed_error(self) -> ConnectionError:
        why = f": {self._close_reason}" if self._close_reason else ""
        return ConnectionError(f"connection to {self.peer} closed{why}")

    # -- state ----------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    @property
    def unsent_bytes(self) -> int:
        """Bytes queued for the peer that it has not taken yet (a stalled peer's backlog)."""
        queued = self._queued
        if self._transport is not None and not self._transport.is_closing():
            queued += self._transport.get_write_buffer_size()
        return queued

    @property
    def pending_requests(self) -> int:
        """Requests sent on this connection still waiting for their reply."""
        return len(self._pending)

    def close(self) -> None:
        """Close once the backlog is written (aborted if the peer takes none of it for
        ``Limits.stall_s``)."""
        if self._transport is not None:
            if self._out:
                self._flush()
            if self._transport.get_write_buffer_size() and not self.closed.done():
                now = self._loop.time()
                self._watch.closing(now, self._written - self._backlog())
                self._arm(now)
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def _error_from_reply(reply: ErrorReply) -> Exception:
    cls = getattr(exceptions, reply.kind, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(reply.message)
        except Exception:  # an exception type with a richer constructor
            pass
    builtin = __builtins__.get(reply.kind) if isinstance(__builtins__, dict) else None
    if isinstance(builtin, type) and issubclass(builtin, Exception):
        return builtin(reply.message)
    return exceptions.RaySystemError(f"{reply.kind}: {reply.message}")


async def serve(
    handlers: HandlerTable,
    token: bytes,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    sock: socket.socket | None = None,
    on_close: Callable[[Connection], None] | None = None,
    listener: Listener | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[asyncio.Server, str]:
    """Serve ``handlers`` on an address; returns the server and its ``host:port``.

    ``listener`` carries the server's identity (a fresh one by default) and its counters;
    ``limits`` bound every accepted connection.
    """
    loop = asyncio.get_running_loop()
    listener = listener or Listener()

    def factory() -> Connection:
        return Connection(token, handlers, server_side=True, on_close=on_close,
                          listener=listener, limits=limits)

    if sock is not None:
        server = await loop.create_server(factory, sock=sock, backlog=LISTEN_BACKLOG)
    else:
        server = await loop.create_server(factory, host=host, port=port, reuse_address=True,
                                          backlog=LISTEN_BACKLOG)
    bound = server.sockets[0].getsockname()
    return server, f"{bound[0]}:{bound[1]}"


async def connect(
    address: str,
    token: bytes,
    handlers: HandlerTable | None = None,
    *,
    timeout: float = 10.0,
    on_close: Callable[[Connection], None] | None = None,
    expect_id: bytes | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Connection:
    """Open an authenticated connection to ``host:port``.

    With ``expect_id`` only the server process with that id is accepted.
    """
    host, _, port = address.rpartition(":")
    loop = asyncio.get_running_loop()
    try:
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                lambda: Connection(token, handlers or {}, server_side=False, on_close=on_close,
                                   expect_id=expect_id, limits=limits),
                host=host.strip("[]"),
                port=int(port),
            ),
            timeout,
        )
        await asyncio.wait_for(asyncio.shield(conn.authenticated), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        raise ConnectionError(f"cannot reach a cellfleet process at {address}: {exc}") from None
    return conn
