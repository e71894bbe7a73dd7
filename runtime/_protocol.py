"""The wire protocol, free of I/O: token handshake and length-prefixed frames.

Every cellfleet port speaks the same protocol. A connection starts with a mutual HMAC
challenge over the cluster's secret token; only after both sides have proven they hold the
token does either side decode a frame. Frames are a 4-byte little-endian length followed by
that many payload bytes; the payload is a msgpack-encoded message (see ``_messages``).

The handshake, server first::

    server -> client   MAGIC + server_nonce                                   (40 bytes)
    client -> server   MAGIC + client_nonce + HMAC(token, "c" + sn + cn)      (72 bytes)
    server -> client   HMAC(token, "s" + cn + sn)                            (32 bytes)

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
    "MAGIC",
    "MAX_FRAME_SIZE",
    "ClientHandshake",
    "FrameDecoder",
    "ServerHandshake",
    "encode_frame",
]

MAGIC = b"CFLEET01"
NONCE_SIZE = 32
PROOF_SIZE = 32
MAX_FRAME_SIZE = 1 << 31  # 2 GiB: large objects travel through shared memory, not frames

_HEADER = struct.Struct("<I")
_SERVER_HELLO = len(MAGIC) + NONCE_SIZE
_CLIENT_HELLO = len(MAGIC) + NONCE_SIZE + PROOF_SIZE


def _proof(token: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(token, role + first + second, hashlib.sha256).digest()


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length."""
    if len(payload) > MAX_FRAME_SIZE:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds the {MAX_FRAME_SIZE} limit")
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into frames; checks the size before buffering a payload."""

    __slots__ = ("_buffer", "_max_frame")

    def __init__(self, max_frame: int = MAX_FRAME_SIZE) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every frame now complete, in order."""
        buf = self._buffer
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (size,) = _HEADER.unpack_from(buf, pos)
            if size > self._max_frame:
                raise ProtocolError(f"frame of {size} bytes exceeds the {self._max_frame} limit")
            if end - pos - 4 < size:
                break
            frames.append(bytes(buf[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        if pos:
            del buf[:pos]
        return frames

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)


class ServerHandshake:
    """The accepting side of the token handshake."""

    def __init__(self, token: bytes) -> None:
        self._token = token
        self._nonce = os.urandom(NONCE_SIZE)
        self._buffer = bytearray()
        self.done = False
        self.leftover = b""

    def initial_bytes(self) -> bytes:
        """The challenge to send as soon as the connection is accepted."""
        return MAGIC + self._nonce

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
        expected = _proof(self._token, b"c", self._nonce, client_nonce)
        if not hmac.compare_digest(proof, expected):
            raise AuthenticationError("peer failed the token challenge")
        self.done = True
        return _proof(self._token, b"s", client_nonce, self._nonce)


class ClientHandshake:
    """The connecting side of the token handshake."""

    def __init__(self, token: bytes) -> None:
        self._token = token
        self._nonce = os.urandom(NONCE_SIZE)
        self._server_nonce = b""
        self._buffer = bytearray()
        self.done = False
        self.leftover = b""

    def receive_data(self, data: bytes) -> bytes | None:
        """Feed bytes from the server; returns the client's hello once the challenge is in.

        Sets ``done`` when the server's proof checks out; raises AuthenticationError otherwise.
        """
        self._buffer += data
        if not self._server_nonce:
            if len(self._buffer) < _SERVER_HELLO:
                return None
            hello = bytes(self._buffer[:_SERVER_HELLO])
            del self._buffer[:_SERVER_HELLO]
            if hello[: len(MAGIC)] != MAGIC:
                raise AuthenticationError(
                    "the peer is not a cellfleet server (wrong address or port?)"
                )
            self._server_nonce = hello[len(MAGIC) :]
            reply = MAGIC + self._nonce + _proof(self._token, b"c", self._server_nonce, self._nonce)
            return reply + self._check_server_proof()
        self._check_server_proof()
        return None

    def _check_server_proof(self) -> bytes:
        if len(self._buffer) < PROOF_SIZE:
            return b""
        proof = bytes(self._buffer[:PROOF_SIZE])
        self.leftover = bytes(self._buffer[PROOF_SIZE:])
        self._buffer.clear()
        expected = _proof(self._token, b"s", self._nonce, self._server_nonce)
        if not hmac.compare_digest(proof, expected):
            raise AuthenticationError("the server failed the token challenge")
        self.done = True
        return b""
