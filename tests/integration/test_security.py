"""Every port of a running cluster refuses peers without the token, and survives bad peers.

The ports: the GCS, the raylet, a worker's core-worker server and the driver's own core-worker
server. The handshake is spoken here from ``_protocol``'s documented layout, with raw sockets.
"""

from __future__ import annotations

import os
import pickle
import select
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import psutil
import pytest
from helpers import runtime_processes, wait_until

import cellfleet
from cellfleet import _context
from cellfleet import _messages as m
from cellfleet._protocol import (
    MAGIC,
    NONCE_SIZE,
    PROOF_SIZE,
    SERVER_ID_SIZE,
    ClientHandshake,
    encode_frame,
)
from cellfleet._rpc import connect
from cellfleet._session import Session, root_dir

pytestmark = pytest.mark.integration

TARGETS = ("gcs", "raylet", "worker", "driver")
SERVER_HELLO = len(MAGIC) + NONCE_SIZE + SERVER_ID_SIZE
WRONG_TOKEN = b"0" * 64


@cellfleet.remote
def add_one(x: int) -> int:
    return x + 1


def rpc(message: m.Message, via: str = "raylet") -> object:
    """A request over the driver's own authenticated connection to the raylet or the GCS."""
    core = _context.core

    async def call() -> object:
        return await getattr(core, via).request(message)

    return core.run(call(), timeout=10)


def worker_addresses() -> dict[str, int]:
    stats = rpc(m.GetNodeStats())
    return {w["address"]: w["pid"] for w in stats["workers"] if w["address"]}


def address_of(target: str) -> str:
    core = _context.core
    if target == "gcs":
        return core.gcs_address
    if target == "raylet":
        return core.raylet_address
    if target == "driver":
        return core.address
    return next(iter(wait_until(worker_addresses, message="a registered worker")))


def own_processes() -> list[psutil.Process]:
    root = str(root_dir())
    return [p for p in runtime_processes() if root in " ".join(p.info["cmdline"] or [])]


def cluster_works(target: str, address: str) -> None:
    """A task still runs, and an attacked worker is still one of the node's workers."""
    assert cellfleet.get(add_one.remote(41), timeout=30) == 42
    if target == "worker":
        assert address in worker_addresses(), "the attacked worker is gone"


# -- raw peers ------------------------------------------------------------------------------


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def open_raw(address: str) -> tuple[socket.socket, bytes]:
    """Connect and read the server's challenge (which it sends before anything else)."""
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    hello = recv_exactly(sock, SERVER_HELLO)
    assert hello.startswith(MAGIC)
    return sock, hello


def assert_dropped(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Wait for the server to close the connection; returns whatever it sent meanwhile."""
    sock.settimeout(timeout)
    received = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {timeout}s") from None
    finally:
        sock.close()
    return received


def client_of(sock: socket.socket, token: bytes) -> ClientHandshake:
    """The client side of the handshake for the server ``sock`` is connected to."""
    host, port = sock.getpeername()[:2]
    return ClientHandshake(token, f"{host}:{port}")


def authenticate(sock: socket.socket, hello: bytes, token: bytes) -> None:
    handshake = client_of(sock, token)
    sock.sendall(handshake.receive_data(hello))
    handshake.receive_data(recv_exactly(sock, PROOF_SIZE))
    assert handshake.done


def garbage(sock: socket.socket, hello: bytes) -> None:
    junk = bytearray(os.urandom(256))
    junk[0] = ord("X")  # never the magic
    sock.sendall(junk)


def wrong_token(sock: socket.socket, hello: bytes) -> None:
    sock.sendall(client_of(sock, WRONG_TOKEN).receive_data(hello)
                 + encode_frame(m.encode(m.GetNodes(), 1)))


def malformed_frame(sock: socket.socket, hello: bytes) -> None:
    authenticate(sock, hello, _context.core.token)
    sock.sendall(encode_frame(b"\xc1\xc1 not msgpack"))


def unknown_message(sock: socket.socket, hello: bytes) -> None:
    authenticate(sock, hello, _context.core.token)
    sock.sendall(encode_frame(msgpack.packb([250, 1, "who knows"])))


def huge_length(sock: socket.socket, hello: bytes) -> None:
    authenticate(sock, hello, _context.core.token)
    sock.sendall(struct.pack("<I", 0xFFFFFFFF) + b"x" * 64)


ATTACKS: dict[str, Callable[[socket.socket, bytes], None]] = {
    f.__name__: f for f in (garbage, wrong_token, malformed_frame, unknown_message, huge_length)
}


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("target", TARGETS)
def test_bad_peer_is_dropped_and_cluster_keeps_working(cluster, target: str, attack: str) -> None:
    address = address_of(target)
    sock, hello = open_raw(address)
    ATTACKS[attack](sock, hello)
    received = assert_dropped(sock)
    if attack in ("garbage", "wrong_token"):
        assert received == b"", "the server answered a peer that failed the handshake"
    cluster_works(target, address)


def test_silent_and_stalled_peers_are_dropped(cluster) -> None:
    """Peers that send nothing, or half a hello, are dropped at the handshake deadline."""
    peers = []
    for target in TARGETS:
        address = address_of(target)
        silent, _ = open_raw(address)
        stalled, _ = open_raw(address)
        stalled.sendall(MAGIC + b"\0" * 10)
        peers += [(target, address, silent), (target, address, stalled)]
    deadline = time.monotonic() + 20
    for target, _, sock in peers:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"the {target} kept an unauthenticated peer for 20s"
        assert assert_dropped(sock) == b""
    for target, address, _ in peers:
        cluster_works(target, address)


class _RunsCode:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_nothing_is_unpickled_before_authentication(cluster, tmp_path: Path) -> None:
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_RunsCode(control)))
    assert control.exists(), "the payload does not run code when unpickled"
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_RunsCode(marker))
    as_message = m.encode(m.DefineFunctions([[b"f" * 16, "f", payload]]), 0)
    for target in TARGETS:
        address = address_of(target)
        for send in (
            lambda sock, hello: sock.sendall(payload),
            lambda sock, hello: sock.sendall(encode_frame(payload)),
            lambda sock, hello: sock.sendall(
                client_of(sock, WRONG_TOKEN).receive_data(hello) + encode_frame(payload)),
            lambda sock, hello: sock.sendall(
                client_of(sock, WRONG_TOKEN).receive_data(hello) + encode_frame(as_message)),
        ):
            sock, hello = open_raw(address)
            send(sock, hello)
            assert assert_dropped(sock) == b""
        cluster_works(target, address)
    assert not marker.exists(), "a runtime process unpickled bytes from an unauthenticated peer"


def test_token_and_arena_are_private(cluster) -> None:
    session = Session(Path(cluster["session_dir"]))
    assert stat.S_IMODE(session.token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(session.logs.stat().st_mode) & 0o077 == 0
    arenas = list(Path("/dev/shm").glob(f"cellfleet-{session.name}-*"))
    assert arenas, "no object-store arena for this session"
    for arena in arenas:
        assert stat.S_IMODE(arena.stat().st_mode) == 0o600


def test_a_world_writable_session_root_is_refused(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o777)
    monkeypatch.setenv("CELLFLEET_TMPDIR", str(root))
    try:
        Session.create()
    except OSError:
        return  # refused: fine
    assert stat.S_IMODE(root.stat().st_mode) & 0o022 == 0, "session root left writable by others"


def test_every_listening_socket_is_on_loopback(cluster) -> None:
    address_of("worker")  # the workers have registered (and listen)
    listening = []
    for proc in own_processes():
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                listening.append((proc.pid, conn.laddr.ip, conn.laddr.port))
    driver_port = int(_context.core.address.rpartition(":")[2])
    for conn in psutil.Process().net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == driver_port:
            listening.append((os.getpid(), conn.laddr.ip, conn.laddr.port))
    assert len(listening) >= 4, listening  # GCS, raylet, workers, driver
    assert all(ip == "127.0.0.1" for _, ip, _ in listening), listening


def test_a_worker_is_known_by_its_id_and_no_other(cluster) -> None:
    """Owners dial leased workers expecting their worker id: another process is refused."""
    address = address_of("worker")
    stats = rpc(m.GetNodeStats())
    worker_id = next(bytes.fromhex(w["worker_id"]) if isinstance(w["worker_id"], str)
                     else w["worker_id"] for w in stats["workers"] if w["address"] == address)
    core = _context.core

    async def dial(expect: bytes) -> bytes:
        conn = await connect(address, core.token, expect_id=expect)
        conn.close()
        return conn.server_id

    assert core.run(dial(worker_id), timeout=10) == worker_id
    with pytest.raises(cellfleet.exceptions.AuthenticationError, match="another took its port"):
        core.run(dial(os.urandom(16)), timeout=10)
