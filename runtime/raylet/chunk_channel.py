"""A blocking connection to another node's raylet that reads object chunks into this arena.


A pull's bytes never pass through Python objects: the holder writes a view of its arena to
the socket (``ReadObjectChunk`` answered as a bulk reply, see ``_messages.encode_parts``), and
this channel ``recv_into``s them straight into the view of the copy's block in this node's
arena, so the kernel does the only copies. It speaks the ordinary wire protocol (the token
handshake, then frames), with requests pipelined and answered in order; a thread of the raylet
runs it, so the raylet's event loop never waits for a transfer.
"""

from __future__ import annotations

import socket
import threading
from collections import deque
from collections.abc import Callable
from itertools import count

from .. import _messages as m
from .._protocol import ClientHandshake, frame_header
from ..exceptions import ObjectLostError
from .object_manager import Pull

__all__ = ["ChunkChannel", "ChannelPool"]

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0  # a holder that sends nothing for this long is gone


class ChunkChannel:
    """One authenticated socket to a holder's raylet, used by one pull at a time."""

    def __init__(self, address: str, token: bytes) -> None:
        host, _, port = address.rpartition(":")
        self.address = address
        self._sock = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S)
        self._sock.settimeout(READ_TIMEOUT_S)
        self._ids = count(1)
        handshake = ClientHandshake(token, address)
        while not handshake.done:
            data = self._sock.recv(4096)
            if not data:
                raise ConnectionError(f"{address} closed the connection during the handshake")
            reply = handshake.receive_data(data)
            if reply:
                self._sock.sendall(reply)
        self._spare = bytearray(handshake.leftover)

    def close(self) -> None:
        self._sock.close()

    def pull(self, pull: Pull, into: memoryview,
             on_chunk: Callable[[int], None] | None = None) -> None:
        """Read the object's chunks into ``into`` (its block here), as ``pull`` asks for them;
        ``on_chunk(bytes received so far)`` after each."""
        asked: deque[tuple[int, int, int]] = deque()
        whole = False
        while not whole:
            for offset, size in pull.next_chunks():
                request_id = next(self._ids)
                payload = m.encode(m.ReadObjectChunk(pull.object_id, offset, size), request_id)
                self._sock.sendall(frame_header(len(payload)) + payload)
                asked.append((request_id, offset, size))
            request_id, offset, size = asked.popleft()
            self._receive(pull.object_id, request_id, into[offset:offset + size])
            whole = pull.chunk_arrived(offset, size)
            if on_chunk is not None:
                on_chunk(pull.received)

    def _receive(self, object_id: bytes, request_id: int, into: memoryview) -> None:
        """Read one answer: a bulk reply lands in ``into``; anything else means not here."""
        length = int.from_bytes(self._read(4), "little")
        expected = m.bulk_head(m.Reply.code, request_id) + len(into).to_bytes(4, "big")
        if length != len(expected) + len(into):  # a small chunk, or not (any more) there
            message, answered = m.decode(self._read(length))
            value = getattr(message, "value", None)
            if answered != request_id or not isinstance(value, bytes) or len(value) != len(into):
                raise ObjectLostError(object_id.hex())
            into[:] = value
            return
        if self._read(len(expected)) != expected:
            raise ConnectionError(f"{self.address} answered out of order")
        view = into
        if self._spare:  # bytes read past the handshake or an earlier frame
            take = min(len(self._spare), len(view))
            view[:take] = self._spare[:take]
            del self._spare[:take]
            view = view[take:]
        while view:
            n = self._sock.recv_into(view)
            if not n:
                raise ConnectionError(f"{self.address} closed the connection mid-chunk")
            view = view[n:]

    def _read(self, size: int) -> bytes:
        out = bytearray(self._spare[:size])
        del self._spare[:size]
        while len(out) < size:
            data = self._sock.recv(size - len(out))
            if not data:
                raise ConnectionError(f"{self.address} closed the connection")
            out += data
        return bytes(out)


class ChannelPool:
    """Idle channels per holder, so consecutive pulls from one node reuse a connection."""

    def __init__(self, token: bytes, per_address: int = 4) -> None:
        self._token = token
        self._per_address = per_address
        self._idle: dict[str, list[ChunkChannel]] = {}
        self._lock = threading.Lock()

    def take(self, address: str) -> ChunkChannel:
        with self._lock:
            idle = self._idle.get(address)
            if idle:
                return idle.pop()
        return ChunkChannel(address, self._token)

    def give_back(self, channel: ChunkChannel) -> None:
        with self._lock:
            idle = self._idle.setdefault(channel.address, [])
            if len(idle) < self._per_address:
                idle.append(channel)
                return
        channel.close()

    def close(self) -> None:
        with self._lock:
            channels = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for channel in channels:
            channel.close()
