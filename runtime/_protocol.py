"""The wire protocol, free of I/O: token handshake and length-prefixed frames.

Every cellfleet port speaks the same protocol. A connection starts with a mutual HMAC
challenge over the cluster's secret token; only after both sides have proven they hold the
token does either side decode a frame. Frames are a 4-byte little-endian length followed by
that many payload bytes; the payload is a msgpack-encoded message (see ``_messages``).
Two length values above any frame's limit are control frames with no payload: ``PING_FRAME``
asks the peer to show it is there and ``PONG_FRAME`` is its answer (keepalive, see
``_connection_state``); a decoder counts the pings it has to answer and swallows the pongs.

The handshake, server first::

    server -> client   MAGIC + server_nonce + server_id                       (56 bytes)
    client -> server   MAGIC + client_nonce + HMAC(token, CLIENT | bound)     (72 bytes)
    server -> client   HMAC(token, SERVER | bound)                            (32 bytes)

    bound = len(address) + address + server_id + server_nonce + client_nonce

``address`` is the server's ``host:port`` as the client dialed it (the socket's peer address)
and as the server received it (the socket's own address); ``server_id`` is a random id of the
serving process, which a client that knows whom it wants to reach checks (``expect_id``).
Every proof is bound to both nonces, both roles and the server's identity, so a proof made
for one server is worthless at any other: a process that dials a stale address (a dead GCS,
a dead owner) and reaches an impostor gives away nothing the impostor can relay to a live
port of the cluster, and a server's proof cannot be reflected back as a client's.

A server that receives a wrong proof closes the connection without saying why. A client
checks the server's proof too, so it never decodes frames from a peer without the token.
The classes here are fed bytes and hand back bytes to send; the asyncio layer only pumps.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from .exceptions import AuthenticationError, ProtocolError

__all__ = [
    "LARGE_FRAME",
    "MAGIC",
    "MAX_FRAME_SIZE",
    "PING_FRAME",
    "PONG_FRAME",
    "SERVER_ID_SIZE",
    "ClientHandshake",
    "FrameDecoder",
    "ServerHandshake",
    "encode_frame",
    "frame_header",
    "new_server_id",
]

MAGIC = b"CFLEET03"
NONCE_SIZE = 32
SERVER_ID_SIZE = 16
PROOF_SIZE = 32
MAX_FRAME_SIZE = 1 << 31  # 2 GiB: large objects travel through shared memory, not frames
LARGE_FRAME = 1 << 20  # frames this large are received into a buffer of their own

_HEADER = struct.Struct("<I")
_PING = MAX_FRAME_SIZE + 1  # control lengths: above any frame's, and only these two
_PONG = MAX_FRAME_SIZE + 2
PING_FRAME = _HEADER.pack(_PING)
PONG_FRAME = _HEADER.pack(_PONG)
_SERVER_HELLO = len(MAGIC) + NONCE_SIZE + SERVER_ID_SIZE
_CLIENT_HELLO = len(MAGIC) + NONCE_SIZE + PROOF_SIZE
_CLIENT_ROLE = b"cellfleet-handshake-v2 client\0"
_SERVER_ROLE = b"cellfleet-handshake-v2 server\0"


def new_server_id() -> bytes:
    """A fresh random identity for one serving process."""
    return os.urandom(SERVER_ID_SIZE)


def _proof(token: bytes, role: bytes, address: str, server_id: bytes, server_nonce: bytes,
           client_nonce: bytes) -> bytes:
    where = address.encode()
    bound = struct.pack("<H", len(where)) + where + server_id + server_nonce + client_nonce
    return hmac.new(token, role + bound, hashlib.sha256).digest()


def frame_header(size: int) -> bytes:
    """The length prefix of a frame whose payload is ``size`` bytes."""
    if size > MAX_FRAME_SIZE:
        raise ProtocolError(f"frame of {size} bytes exceeds the {MAX_FRAME_SIZE} limit")
    return _HEADER.pack(size)


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length."""
    return frame_header(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into frames; checks the size before buffering a payload.

    Control frames are not returned: ``pings`` counts the pings received and not yet answered
    (the caller answers each with ``PONG_FRAME`` and resets it), pongs are dropped. A frame of
    ``LARGE_FRAME`` bytes or more is received into a buffer of its own size, allocated once its
    header is in, and returned as that buffer: one copy of its bytes, however they trickle in.
    """

    __slots__ = ("_buffer", "_max_frame", "pings", "_large", "_filled")

    def __init__(self, max_frame: int = MAX_FRAME_SIZE) -> None:
        if not 0 <= max_frame <= MAX_FRAME_SIZE:
            raise ValueError(f"max_frame must be within 0..{MAX_FRAME_SIZE}, not {max_frame}")
        self._buffer = bytearray()
        self._max_frame = max_frame
        self.pings = 0
        self._large: bytearray | None = None  # the large frame being received
        self._filled = 0

    def feed(self, data: bytes) -> list[bytes | bytearray]:
        """Add received bytes; return every frame now complete, in order."""
        frames: list[bytes | bytearray] = []
        if self._large is not None:
            data = self._fill(data, frames)
            if not data:
                return frames
        buf = self._buffer
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (size,) = _HEADER.unpack_from(buf, pos)
            if size > self._max_frame:
                if size == _PING or size == _PONG:  # a control frame: its header is all of it
                    self.pings += size == _PING
                    pos += 4
                    continue
                raise ProtocolError(f"frame of {size} bytes exceeds the {self._max_frame} limit")
            if end - pos - 4 < size:
                if size >= LARGE_FRAME:  # the rest goes straight into a buffer of its own
                    self._large, self._filled = bytearray(size), 0
                    rest = bytes(buf[pos + 4:])
                    del buf[:]
                    rest = self._fill(rest, frames)
                    return frames + self.feed(rest) if rest else frames
                break
            frames.append(buf[pos + 4 : pos + 4 + size])  # one copy (decode takes bytearray)
            pos += 4 + size
        if pos:
            del buf[:pos]
        return frames

    def _fill(self, data: bytes, frames: list) -> bytes:
        """Copy into the large frame; what follows it is returned."""
        large = self._large
        take = min(len(large) - self._filled, len(data))
        large[self._filled:self._filled + take] = data[:take] if take < len(data) else data
        self._filled += take
        if self._filled == len(large):
            frames.append(large)
            self._large = None
        return data[take:] if take < len(data) else b""

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer) + (self._filled if self._large is not None else 0)


class ServerHandshake:
    """The accepting side of the token handshake.

    ``address`` is this server's ``host:port`` as the connection reached it; ``server_id``
    identifies this process (see ``new_server_id``).
    """

    def __init__(self, token: bytes, address: str, server_id: bytes) -> None:
        if len(server_id) != SERVER_ID_SIZE:
            raise ValueError(f"a server id has {SERVER_ID_SIZE} bytes, not {len(server_id)}")
        self._token = token
        self._address = address
        self._server_id = server_id
        self._nonce = os.urandom(NONCE_SIZE)
        self._buffer = bytearray()
        self.done = False
        self.leftover = b""

    def initial_bytes(self) -> bytes:
        """The challenge to send as soon as the connection is accepted."""
        return MAGIC + self._nonce + self._server_id

    def receive_data(self, data: bytes) -> bytes | None:
        """Feed bytes from the client; returns the server's proof once the client is verified.

        Raises AuthenticationError for a wrong magic or proof. Bytes after the client's hello
        are kept in ``leftover`` for the frame decoder.
        """
        self._buffer += data
        if len(self._buffer) < _CLIENT_HELLO:
            if not MAGIC.startswith(bytes(self._buffer[: len(MAGIC)])):
                raise AuthenticationError("peer does not speak the cellfleet protocol")
            return None
        hello = bytes(self._buffer[:_CLIENT_HELLO])
        self.leftover = bytes(self._buffer[_CLIENT_HELLO:])
        self._buffer.clear()
        if hello[: len(MAGIC)] != MAGIC:
            raise AuthenticationError("peer does not speak the cellfleet protocol")
        client_nonce = hello[len(MAGIC) : len(MAGIC) + NONCE_SIZE]
        proof = hello[len(MAGIC) + NONCE_SIZE :]
        bound = (self._address, self._server_id, self._nonce, client_nonce)
        if not hmac.compare_digest(proof, _proof(self._token, _CLIENT_ROLE, *bound)):
            raise AuthenticationError("peer failed the token challenge")
        self.done = True
        return _proof(self._token, _SERVER_ROLE, *bound)


class ClientHandshake:
    """The connecting side of the token handshake.

    ``address`` is the server's ``host:port`` as dialed. With ``expect_id`` the client also
    refuses any server process but that one (a restarted process on the same port, say).
    """

    def __init__(self, token: bytes, address: str, expect_id: bytes | None = None) -> None:
        self._token = token
        self._address = address
        self._expect_id = expect_id
        self._nonce = os.urandom(NONCE_SIZE)
        self._bound: tuple[str, bytes, bytes, bytes] | None = None
        self._buffer = bytearray()
        self.done = False
        self.leftover = b""
        self.server_id = b""

    def receive_data(self, data: bytes) -> bytes | None:
        """Feed bytes from the server; returns the client's hello once the challenge is in.

        Sets ``done`` when the server's proof checks out; raises AuthenticationError otherwise.
        """
        self._buffer += data
        if self._bound is None:
            if len(self._buffer) < _SERVER_HELLO:
                return None
            hello = bytes(self._buffer[:_SERVER_HELLO])
            del self._buffer[:_SERVER_HELLO]
            if hello[: len(MAGIC)] != MAGIC:
                raise AuthenticationError(
                    "the peer is not a cellfleet server of this version (wrong address or port?)"
                )
            server_nonce = hello[len(MAGIC) : len(MAGIC) + NONCE_SIZE]
            self.server_id = hello[len(MAGIC) + NONCE_SIZE :]
            if self._expect_id is not None and self.server_id != self._expect_id:
                raise AuthenticationError(
                    f"the process at {self._address} is not the one this connection is for "
                    "(it has exited and another took its port)"
                )
            self._bound = (self._address, self.server_id, server_nonce, self._nonce)
            reply = MAGIC + self._nonce + _proof(self._token, _CLIENT_ROLE, *self._bound)
            return reply + self._check_server_proof()
        self._check_server_proof()
        return None

    def _check_server_proof(self) -> bytes:
        if len(self._buffer) < PROOF_SIZE:
            return b""
        proof = bytes(self._buffer[:PROOF_SIZE])
        self.leftover = bytes(self._buffer[PROOF_SIZE:])
        self._buffer.clear()
        expected = _proof(self._token, _SERVER_ROLE, *self._bound)  # type: ignore[misc]
        if not hmac.compare_digest(proof, expected):
            raise AuthenticationError("the server failed the token challenge")
        self.done = True
        return b""
