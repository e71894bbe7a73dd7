"""The I/O-free wire protocol: handshake bytes, frames, messages, fuzzing."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellfleet import _messages as m
from cellfleet._protocol import (
    MAGIC,
    PROOF_SIZE,
    ClientHandshake,
    FrameDecoder,
    ServerHandshake,
    encode_frame,
    new_server_id,
)
from cellfleet.exceptions import AuthenticationError, ProtocolError

TOKEN = b"secret-token"
ADDRESS = "127.0.0.1:6380"
OTHER = "127.0.0.1:41234"


def server_at(address: str = ADDRESS, token: bytes = TOKEN) -> ServerHandshake:
    return ServerHandshake(token, address, new_server_id())


def run_handshake(client_token: bytes, server_token: bytes) -> tuple[ClientHandshake,
                                                                      ServerHandshake]:
    server = server_at(token=server_token)
    client = ClientHandshake(client_token, ADDRESS)
    hello = client.receive_data(server.initial_bytes())
    proof = server.receive_data(hello)
    client.receive_data(proof)
    return client, server


def test_handshake_with_the_same_token_authenticates_both_sides() -> None:
    client, server = run_handshake(TOKEN, TOKEN)
    assert client.done and server.done


def test_server_refuses_a_wrong_token() -> None:
    server = server_at()
    client = ClientHandshake(b"wrong", ADDRESS)
    hello = client.receive_data(server.initial_bytes())
    with pytest.raises(AuthenticationError):
        server.receive_data(hello)
    assert not server.done


def test_client_refuses_a_server_without_the_token() -> None:
    server = server_at(token=b"other")
    client = ClientHandshake(TOKEN, ADDRESS)
    client.receive_data(server.initial_bytes())
    forged = hmac.new(b"other", b"s" + b"x" * 64, hashlib.sha256).digest()
    with pytest.raises(AuthenticationError):
        client.receive_data(forged)


def test_server_hello_layout_is_magic_nonce_then_server_id() -> None:
    server_id = new_server_id()
    hello = ServerHandshake(TOKEN, ADDRESS, server_id).initial_bytes()
    assert hello[:8] == MAGIC == b"CFLEET03" and len(hello) == 56 and hello[40:] == server_id


def test_garbage_is_refused_before_the_full_hello_arrives() -> None:
    with pytest.raises(AuthenticationError):
        server_at().receive_data(b"GET / HTTP/1.1\r\n")


def test_a_proof_relayed_to_another_server_is_refused() -> None:
    """An impostor on a stale address forwards a live server's challenge to a real client."""
    victim = server_at(OTHER)                      # a live worker's port
    client = ClientHandshake(TOKEN, ADDRESS)       # dials the dead GCS's address
    relayed_hello = client.receive_data(victim.initial_bytes())
    with pytest.raises(AuthenticationError):
        victim.receive_data(relayed_hello)
    assert not victim.done


def test_a_proof_is_bound_to_the_server_id() -> None:
    client = ClientHandshake(TOKEN, ADDRESS)
    one, two = server_at(), server_at()
    hello = client.receive_data(two.initial_bytes()[:40] + one.initial_bytes()[40:])
    with pytest.raises(AuthenticationError):
        two.receive_data(hello)


def test_a_client_proof_reflected_back_as_the_server_proof_is_refused() -> None:
    """An impostor without the token answers a client with the client's own proof."""
    client = ClientHandshake(TOKEN, ADDRESS)
    hello = client.receive_data(MAGIC + os.urandom(32) + new_server_id())
    assert hello is not None and len(hello) == len(MAGIC) + 32 + PROOF_SIZE
    with pytest.raises(AuthenticationError):
        client.receive_data(hello[-PROOF_SIZE:])
    assert not client.done


def test_replaying_a_recorded_client_hello_is_refused() -> None:
    server = server_at()
    client = ClientHandshake(TOKEN, ADDRESS)
    recorded = client.receive_data(server.initial_bytes())
    assert server.receive_data(recorded)
    with pytest.raises(AuthenticationError):
        server_at().receive_data(recorded)


def test_client_expecting_one_process_refuses_another_on_the_same_port() -> None:
    expected, restarted = new_server_id(), server_at()
    client = ClientHandshake(TOKEN, ADDRESS, expect_id=expected)
    with pytest.raises(AuthenticationError, match="another took its port"):
        client.receive_data(restarted.initial_bytes())


def test_client_expecting_the_right_process_authenticates() -> None:
    server_id = new_server_id()
    server = ServerHandshake(TOKEN, ADDRESS, server_id)
    client = ClientHandshake(TOKEN, ADDRESS, expect_id=server_id)
    client.receive_data(server.receive_data(client.receive_data(server.initial_bytes())))
    assert client.done and server.done and client.server_id == server_id


def test_bytes_after_the_hello_are_kept_for_the_frame_decoder() -> None:
    server = server_at()
    client = ClientHandshake(TOKEN, ADDRESS)
    hello = client.receive_data(server.initial_bytes())
    server.receive_data(hello + b"\x01\x00")
    assert server.done and server.leftover == b"\x01\x00"


def test_handshake_fed_one_byte_at_a_time() -> None:
    server = server_at()
    client = ClientHandshake(TOKEN, ADDRESS)
    hello = b""
    for byte in server.initial_bytes():
        hello += client.receive_data(bytes([byte])) or b""
    proof = b""
    for byte in hello:
        proof += server.receive_data(bytes([byte])) or b""
    for byte in proof:
        client.receive_data(bytes([byte]))
    assert client.done and server.done


def test_frames_are_length_prefixed_little_endian() -> None:
    assert encode_frame(b"abc") == b"\x03\x00\x00\x00abc"


def test_decoder_splits_and_joins_frames_across_chunks() -> None:
    stream = encode_frame(b"one") + encode_frame(b"") + encode_frame(b"three")
    decoder = FrameDecoder()
    frames = []
    for i in range(0, len(stream), 2):
        frames += decoder.feed(stream[i : i + 2])
    assert frames == [b"one", b"", b"three"] and decoder.buffered == 0


def test_decoder_refuses_an_oversized_length_before_buffering_it() -> None:
    decoder = FrameDecoder(max_frame=1024)
    with pytest.raises(ProtocolError):
        decoder.feed(struct.pack("<I", 1025))


def test_messages_round_trip() -> None:
    message = m.RequestLease({"CPU": 1.0}, "key", "task")
    decoded, request_id = m.decode(m.encode(message, 7))
    assert decoded == message and request_id == 7


def test_every_message_code_is_unique() -> None:
    assert len({cls.code for cls in m.MESSAGE_TYPES.values()}) == len(m.MESSAGE_TYPES)


@pytest.mark.parametrize("payload", [b"", b"\xc1", b"\x93\x01\x02", b"\x92\xcd\xff\xff\x00",
                                     b"\x94\x1f\x00\x01\x02"])
def test_malformed_messages_raise_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        m.decode(payload)


@given(st.binary(max_size=512))
def test_decoding_arbitrary_bytes_never_raises_anything_else(data: bytes) -> None:
    try:
        m.decode(data)
    except ProtocolError:
        pass


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(1, 64))
def test_any_split_of_a_frame_stream_decodes_to_the_same_frames(
    payloads: list[bytes], chunk: int
) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder()
    out = []
    for i in range(0, len(stream), chunk):
        out += decoder.feed(stream[i : i + chunk])
    assert out == payloads


@given(st.binary(min_size=1, max_size=200))
def test_server_handshake_never_accepts_random_bytes(data: bytes) -> None:
    server = server_at()
    try:
        server.receive_data(data)
    except AuthenticationError:
        return
    assert not server.done
