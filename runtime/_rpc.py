"""The asyncio pump around ``_protocol`` and ``_messages``: connections, servers, requests.

Every process role (GCS, raylet, core worker) serves a table ``{message class: handler}``.
A handler is called as ``handler(connection, message)`` and returns the reply value, or an
awaitable of it, for a request; one-way messages ignore the return value. Authentication
happens here, once, before any handler sees a message; an unauthenticated or malformed peer
is logged and dropped and the server keeps serving.

Writes are coalesced: everything sent during one event-loop iteration goes out in one
``write`` call, which is what keeps pipelined task traffic cheap.

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
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import exceptions
from ._messages import ErrorReply, Message, Reply, decode, encode
from ._protocol import (
    ClientHandshake,
    FrameDecoder,
    ServerHandshake,
    encode_frame,
    new_server_id,
)

__all__ = ["Connection", "HandlerTable", "Listener", "connect", "serve"]

logger = logging.getLogger(__name__)

HandlerTable = dict[type[Message], Callable[["Connection", Any], Any]]
HANDSHAKE_TIMEOUT_S = 3.0
MAX_UNAUTHENTICATED = 128
LISTEN_BACKLOG = 512
REFUSAL_LOG_INTERVAL_S = 10.0


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
    """One authenticated, framed, message-level connection (either side)."""

    def __init__(
        self,
        token: bytes,
        handlers: HandlerTable,
        *,
        server_side: bool,
        on_close: Callable[[Connection], None] | None = None,
        listener: Listener | None = None,
        expect_id: bytes | None = None,
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
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._on_close = on_close
        self.authenticated: asyncio.Future[None] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.peer = "?"
        self.server_id = b""  # the server process's identity, on the client side
        self.state: Any = None  # what the serving role attaches to this peer

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = _address_of(peer)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
        if not self._trusted:
            data = self._advance_handshake(data)
            if not data:
                return
        try:
            frames = self._decoder.feed(data)
            for frame in frames:
                message, request_id = decode(frame)
                self._dispatch(message, request_id)
        except exceptions.ProtocolError as exc:
            logger.warning("dropping %s: %s", self.peer, exc)
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave_handshake()
        error = ConnectionError(f"connection to {self.peer} closed")
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
            if fut is None or fut.done():
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
        """Queue a message; everything queued in one loop iteration leaves in one write."""
        if self._transport is None or self._transport.is_closing():
            return
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(encode_frame(encode(message, request_id)))

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(out))

    def request(self, message: Message) -> asyncio.Future:
        """Send a request; the future resolves with the reply value or raises its error."""
        fut = self._loop.create_future()
        if self._transport is None or self._transport.is_closing():
            fut.set_exception(ConnectionError(f"connection to {self.peer} closed"))
            return fut
        request_id = next(self._ids)
        self._pending[request_id] = fut
        self.send(message, request_id)
        return fut

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    @property
    def unsent_bytes(self) -> int:
        """Bytes queued for the peer that it has not taken yet (a stalled peer's backlog)."""
        queued = sum(map(len, self._out))
        if self._transport is not None and not self._transport.is_closing():
            queued += self._transport.get_write_buffer_size()
        return queued

    def close(self) -> None:
        if self._transport is not None:
            if self._out:
                self._flush()
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
) -> tuple[asyncio.Server, str]:
    """Serve ``handlers`` on an address; returns the server and its ``host:port``.

    ``listener`` carries the server's identity (a fresh one by default) and its counters.
    """
    loop = asyncio.get_running_loop()
    listener = listener or Listener()

    def factory() -> Connection:
        return Connection(token, handlers, server_side=True, on_close=on_close,
                          listener=listener)

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
                                   expect_id=expect_id),
                host=host.strip("[]"),
                port=int(port),
            ),
            timeout,
        )
        await asyncio.wait_for(asyncio.shield(conn.authenticated), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        raise ConnectionError(f"cannot reach a cellfleet process at {address}: {exc}") from None
    return conn
