"""Blocking connections to other nodes' chunk ports that read object chunks into this arena.

A pull's bytes never pass through Python objects: the holder's chunk port (``chunk_server``)
writes them from its arena file to the socket with ``sendfile``, and a channel here
``recv_into``s them straight into the view of the copy's block in this node's arena, so the
kernel makes the only copies. A channel speaks the ordinary wire protocol (the token
handshake, then frames), with requests pipelined and answered in order. ``pull_object`` runs a
pull's lanes (``object_manager.Pull``), one thread and one channel each, on threads of the
raylet, so the raylet's event loop never waits for a transfer.

A holder is named by its raylet's address; its chunk port is asked for once on that address
(``ChunkAddress``) and remembered by the ``ChannelPool``.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import deque
from collections.abc import Callable, Hashable
from itertools import count

from .. import _messages as m
from .._protocol import ClientHandshake, frame_header
from ..exceptions import ObjectLostError
from .chunk_server import SOCKET_BUFFER
from .object_manager import Pull

__all__ = ["ChannelPool", "ChunkChannel", "StaleChannel", "pull_object"]

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0  # a holder that sends nothing for this long is gone


class StaleChannel(ConnectionError):
    """A connection taken from the idle pool was closed before it answered anything."""


class ChunkChannel:
    """One authenticated socket to a raylet's port (``ask``) or its chunk port (``lane``)."""

    def __init__(self, address: str, token: bytes) -> None:
        host, _, port = address.rpartition(":")
        self.address = address
        self.holder = address  # the raylet this channel reads from (``ChannelPool.take``)
        self.reused = False  # taken from the idle pool (it may have gone stale there)
        self._sock = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
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

    def ask(self, message: m.Message) -> object:
        """One request and its answer's value (a raylet's own port, not a chunk port)."""
        payload = m.encode(message, next(self._ids))
        self._sock.sendall(frame_header(len(payload)) + payload)
        length = int.from_bytes(self._read(4), "little")
        answer, _ = m.decode(self._read(length))
        if not isinstance(answer, m.Reply):
            raise ConnectionError(f"{self.address} answered {answer!r}")
        return answer.value

    def lane(self, pull: Pull, lane: Hashable, holder: str, lock: threading.Lock,
             into: memoryview, on_chunk: Callable[[int], None] | None = None) -> None:
        """Read the chunks ``pull`` gives this lane into ``into`` (the copy's block here)
        until it gives no more; ``on_chunk(bytes received so far)`` after each."""
        asked: deque[tuple[int, int, int]] = deque()
        answered = False
        while True:
            with lock:
                chunks = pull.next_chunks(lane, holder)
            if chunks:
                requests = []
                for offset, size in chunks:
                    request_id = next(self._ids)
                    payload = m.encode(m.ReadObjectChunk(pull.object_id, offset, size),
                                       request_id)
                    requests.append(frame_header(len(payload)) + payload)
                    asked.append((request_id, offset, size))
                self._sock.sendall(b"".join(requests))
            if not asked:
                return
            request_id, offset, size = asked.popleft()
            try:
                self._receive(pull.object_id, request_id, into[offset:offset + size])
            except (ConnectionError, OSError) as exc:
                if self.reused and not answered and not self._spare:
                    raise StaleChannel(f"{self.address}: {exc}") from exc
                raise
            answered = True
            with lock:
                pull.chunk_arrived(lane, offset)
                received = pull.received
            if on_chunk is not None:
                on_chunk(received)

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
    """Idle chunk channels per holder, so consecutive pulls from one node reuse connections;
    and each holder's chunk port, asked for once."""

    def __init__(self, token: bytes, per_address: int = 2) -> None:
        self._token = token
        self._per_address = per_address
        self._idle: dict[str, list[ChunkChannel]] = {}
        self._chunk_ports: dict[str, str] = {}  # raylet address -> its chunk port's
        self._lock = threading.Lock()

    def take(self, holder: str, fresh: bool = False) -> ChunkChannel:
        """A channel to the chunk port of the raylet at ``holder`` (``fresh``: a new one)."""
        with self._lock:
            idle = self._idle.get(holder)
            if idle and not fresh:
                channel = idle.pop()
                channel.reused = True
                return channel
            address = self._chunk_ports.get(holder)
        if address is None:
            asking = ChunkChannel(holder, self._token)
            try:
                address = str(asking.ask(m.ChunkAddress()))
            finally:
                asking.close()
            with self._lock:
                self._chunk_ports[holder] = address
        try:
            channel = ChunkChannel(address, self._token)
        except OSError:
            with self._lock:  # a raylet restarted at the same address has another port
                self._chunk_ports.pop(holder, None)
            raise
        channel.holder = holder
        return channel

    def give_back(self, channel: ChunkChannel) -> None:
        with self._lock:
            idle = self._idle.setdefault(channel.holder, [])
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


def pull_object(pull: Pull, into: memoryview, pool: ChannelPool, cond: threading.Condition,
                on_chunk: Callable[[int], None] | None = None) -> None:
    """Carry ``pull`` out: run its lanes, each on a thread with a channel of its own, and
    start new ones while chunks that failed lanes gave back remain and a holder is left.
    ``cond`` guards ``pull``. Returns once the copy is whole; ObjectLostError when every
    holder has failed."""
    running = [0]
    errors: list[str] = []
    lanes = count()

    def start(holder: str, fresh: bool = False) -> None:
        threading.Thread(target=run, args=(next(lanes), holder, fresh), daemon=True,
                         name="cellfleet-pull").start()

    def run(lane: int, holder: str, fresh: bool) -> None:
        again = False
        try:
            channel = pool.take(holder, fresh)
            try:
                channel.lane(pull, lane, holder, cond, into, on_chunk)
            except BaseException:
                channel.close()
                raise
            pool.give_back(channel)
        except StaleChannel:  # an idle connection had gone: the holder may well be there
            with cond:
                pull.lane_failed(lane, holder, holder_failed=False)
            again = True
        except Exception as exc:  # the holder went, or lost the object: others take over
            logger.info("a pull of %s from %s failed over: %r", pull.object_id.hex(), holder,
                        exc)
            with cond:
                pull.lane_failed(lane, holder)
                errors.append(f"{holder}: {exc!r}")
        finally:
            with cond:
                if again:
                    start(holder, fresh=True)  # the same lane's place, on a new connection
                else:
                    running[0] -= 1
                cond.notify_all()

    with cond:
        while not pull.whole:
            if not running[0]:
                holders = pull.lanes()
                if not holders:
                    logger.warning("no holder of %s could send it: %s", pull.object_id.hex(),
                                   "; ".join(errors))
                    raise ObjectLostError(pull.object_id.hex(), pull.owner)
                running[0] = len(holders)
                for holder in holders:
                    start(holder)
            cond.wait()
