"""The raylet's chunk port: where other nodes' pulls read this node's objects.

A listening socket beside the raylet's own port, served by threads with blocking sockets so a
transfer never waits on (or holds up) the raylet's event loop. A connection first passes the
cluster's token handshake (``_protocol.ServerHandshake``; a peer that fails it, or has not
finished it within ``HANDSHAKE_S``, is dropped before anything it sent is decoded), then sends
``ReadObjectChunk`` requests in ordinary frames, pipelined. Each is answered in order with a
bulk reply (the header ``_messages.encode_parts`` would write, then the bytes), written by
``sendfile`` from the arena's file: the bytes go from the shared memory to the socket inside
the kernel, never through Python. The object is pinned in the store while its chunks are
written: from the first request for it until a request for another object, or until the
connection has no request waiting (``pin`` and ``unpin`` hop to the raylet's loop, which owns
the store, so a pipelined run of chunks costs one pin). A primary copy spilled to disk is read
back into the store first, and then served. An object not here, or a range outside it, is
answered ``None``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
from collections.abc import Callable

from .. import _messages as m
from .._protocol import ServerHandshake, frame_header, new_server_id
from .._shm import SHM_DIR
from ..exceptions import AuthenticationError, ProtocolError

__all__ = ["HANDSHAKE_S", "MAX_CONNECTIONS", "SOCKET_BUFFER", "ChunkReader", "ChunkServer"]

logger = logging.getLogger(__name__)

HANDSHAKE_S = 3.0  # as the raylet's own listener: an honest peer answers within a round trip
MAX_CONNECTIONS = 512  # other nodes' lanes (and their idle connections); more are refused
MAX_REQUEST = 4096  # a ReadObjectChunk frame is ~40 bytes
SOCKET_BUFFER = 4 << 20  # SO_SNDBUF / SO_RCVBUF of chunk connections


class ChunkReader:
    """One chunk connection, as the store's readers are known: its pins, while it is open."""

    __slots__ = ("is_open",)

    def __init__(self) -> None:
        self.is_open = True


class ChunkServer:
    """Serve ``ReadObjectChunk`` from this node's arena on a port of its own.

    ``pin(key, object_id)`` returns the sealed object's ``(offset, size)`` pinned for ``key``
    (a :class:`ChunkReader`), or ``None``; ``unpin(key, object_id)`` gives the pin back;
    ``gone(key)`` ends every pin of a closed connection. All three are called from the
    server's threads.
    """

    def __init__(self, host: str, token: bytes, arena_name: str,
                 pin: Callable[[object, bytes], tuple[int, int] | None],
                 unpin: Callable[[object, bytes], None],
                 gone: Callable[[object], None]) -> None:
        self._token = token
        self._pin, self._unpin, self._gone = pin, unpin, gone
        self._fd = os.open(os.path.join(SHM_DIR, arena_name), os.O_RDONLY | os.O_CLOEXEC)
        self._server_id = new_server_id()
        self._sock = socket.create_server((host, 0), backlog=128)
        self.address = "{}:{}".format(*self._sock.getsockname()[:2])
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._closed = False
        self.served_bytes = 0  # chunk bytes written to other nodes, ever
        self._thread = threading.Thread(target=self._accept, name="cellfleet-chunks",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop accepting and end every connection."""
        with self._lock:
            self._closed = True
            connections = list(self._connections)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        os.close(self._fd)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._closed or len(self._connections) >= MAX_CONNECTIONS:
                    conn.close()
                    continue
                self._connections.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="cellfleet-chunk",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        key = ChunkReader()  # this connection's pins in the store
        pinned: list = [None, None]  # the object pinned for this connection, and where it is
        try:
            self._handshake(conn)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            spare = bytearray()
            while True:
                if pinned[0] is not None and not spare and not _readable(conn):
                    self._unpin(key, pinned[0])  # no request waits: the lane is done for now
                    pinned[:] = None, None
                payload, spare = _read_frame(conn, spare)
                if payload is None:
                    return  # the peer closed
                message, request_id = m.decode(payload)
                if type(message) is not m.ReadObjectChunk or not request_id:
                    raise ProtocolError(f"a chunk port serves ReadObjectChunk, not "
                                        f"{type(message).__name__}")
                if message.object_id != pinned[0]:
                    if pinned[0] is not None:
                        self._unpin(key, pinned[0])
                    pinned[:] = message.object_id, self._pin(key, message.object_id)
                self._answer(conn, pinned[1], message, request_id)
        except (AuthenticationError, ProtocolError) as exc:
            logger.info("refused a connection on the chunk port: %s", exc)
        except OSError:
            pass  # the peer went (a pull that failed over, a node that stopped)
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()
            key.is_open = False
            self._gone(key)

    def _handshake(self, conn: socket.socket) -> None:
        conn.settimeout(HANDSHAKE_S)
        address = "{}:{}".format(*conn.getsockname()[:2])
        handshake = ServerHandshake(self._token, address, self._server_id)
        conn.sendall(handshake.initial_bytes())
        while not handshake.done:
            data = conn.recv(4096)
            if not data:
                raise OSError("closed during the handshake")
            proof = handshake.receive_data(data)
            if proof is not None:
                conn.sendall(proof)
        if handshake.leftover:
            raise ProtocolError("frames before the handshake finished")
        conn.settimeout(None)

    def _answer(self, conn: socket.socket, where: tuple[int, int] | None,
                msg: m.ReadObjectChunk, request_id: int) -> None:
        """One chunk of the pinned object at ``where`` (``None``: not here)."""
        if where is None or msg.offset < 0 or msg.size <= 0 or msg.offset + msg.size > where[1]:
            reply = m.encode(m.Reply(None), request_id)
            conn.sendall(frame_header(len(reply)) + reply)
            return
        head = m.bulk_head(m.Reply.code, request_id) + msg.size.to_bytes(4, "big")
        conn.sendall(frame_header(len(head) + msg.size) + head)
        start = where[0] + msg.offset
        end = start + msg.size
        while start < end:
            sent = os.sendfile(conn.fileno(), self._fd, start, end - start)
            if not sent:
                raise OSError("the arena file ended early")
            start += sent
        with self._lock:
            self.served_bytes += msg.size


def _readable(conn: socket.socket) -> bool:
    poller = select.poll()
    poller.register(conn, select.POLLIN)
    return bool(poller.poll(0))


def _read_frame(conn: socket.socket, spare: bytearray) -> tuple[bytes | None, bytearray]:
    """One request frame (``None`` once the peer has closed), and the bytes past it."""
    while True:
        if len(spare) >= 4:
            size = int.from_bytes(spare[:4], "little")
            if size > MAX_REQUEST:
                raise ProtocolError(f"a request frame of {size} bytes")
            if len(spare) >= 4 + size:
                return bytes(spare[4:4 + size]), spare[4 + size:]
        data = conn.recv(65536)
        if not data:
            if spare:
                raise ProtocolError("closed mid-frame")
            return None, spare
        spare += data
