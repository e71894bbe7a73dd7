"""Connections to real runtime processes: a peer that never reads, a paused peer, garbage.

The GCS is the victim or the peer here: it answers anyone holding the token, so a client that
floods it with requests and reads nothing must not make it grow without bound, and a GCS that
is paused (SIGSTOP) must be noticed by whoever waits on it.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest
from helpers import runtime_processes, wait_until

import cellfleet
from cellfleet import _context
from cellfleet import _messages as m
from cellfleet._connection_state import DEFAULT_LIMITS
from cellfleet._protocol import (
    MAGIC,
    NONCE_SIZE,
    PING_FRAME,
    PONG_FRAME,
    SERVER_ID_SIZE,
    ClientHandshake,
    encode_frame,
)
from cellfleet._rpc import connect
from cellfleet._session import Session

pytestmark = pytest.mark.integration

MiB = 1 << 20
VALUE = b"v" * MiB


@cellfleet.remote
def add_one(x: int) -> int:
    return x + 1


def gcs_process() -> psutil.Process:
    return next(p for p in runtime_processes()
                if "-m cellfleet.gcs" in " ".join(p.info["cmdline"] or []))


def memory_kib(proc: psutil.Process, field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (the peak) of ``proc``, in KiB."""
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {proc.pid}")


def log_of(info: dict, name: str) -> str:
    """The log of the cluster's ``name`` process (``gcs``, ``raylet``)."""
    session = Session(Path(info["session_dir"]))
    return (session.logs / f"{name}.log").read_text(errors="replace")


def authenticated_socket(address: str, token: bytes, rcvbuf: int | None = None) -> socket.socket:
    """A raw socket past the token handshake, speaking frames from here on."""
    host, _, port = address.rpartition(":")
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    handshake = ClientHandshake(token, address)
    hello = b""
    while len(hello) < len(MAGIC) + NONCE_SIZE + SERVER_ID_SIZE:
        hello += sock.recv(4096)
    sock.sendall(handshake.receive_data(hello))  # type: ignore[arg-type]
    while not handshake.done:
        handshake.receive_data(sock.recv(4096))
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_a_peer_that_never_reads_is_closed_at_the_outbox_bound(cluster) -> None:
    """1 GiB of replies asked for and never read: the GCS holds at most its 256 MiB bound."""
    core = _context.core
    core.request("gcs", m.KvPut("connections", b"big", VALUE, True))
    gcs = gcs_process()
    before = memory_kib(gcs, "VmRSS")
    flood = authenticated_socket(core.gcs_address, core.token, rcvbuf=4096)
    try:
        requests = b"".join(encode_frame(m.encode(m.KvGet("connections", b"big"), i + 1))
                            for i in range(1024))
        flood.sendall(requests)
        wait_until(lambda: "closed as wedged" in log_of(cluster, "gcs"), timeout=60,
                   message="the GCS to close the connection that reads nothing")
        log = log_of(cluster, "gcs")
        assert "over the 256.0 MiB outbox bound" in log and "not reading" in log
        grown_mib = (memory_kib(gcs, "VmHWM") - before) / 1024
        assert grown_mib < 256 + 160, f"the GCS grew by {grown_mib:.0f} MiB"
    finally:
        flood.close()
    assert core.request("gcs", m.KvGet("connections", b"big")) == VALUE
    assert cellfleet.get(add_one.remote(1), timeout=30) == 2


@pytest.mark.parametrize("target", ["gcs", "raylet"])
def test_garbage_after_the_handshake_is_dropped_and_pings_are_answered(cluster,
                                                                       target: str) -> None:
    core = _context.core
    address = core.gcs_address if target == "gcs" else core.raylet_address
    sock = authenticated_socket(address, core.token)
    try:
        sock.sendall(PING_FRAME)
        pong = b""
        while len(pong) < len(PONG_FRAME):
            pong += sock.recv(len(PONG_FRAME) - len(pong))
        assert pong == PONG_FRAME
        sock.sendall(encode_frame(os.urandom(64)) + os.urandom(512))
        assert read_until_closed(sock) == b"", f"the {target} answered garbage"
    finally:
        sock.close()
    assert cellfleet.get(add_one.remote(2), timeout=30) == 3


def test_a_paused_gcs_is_noticed_and_its_requests_fail_clearly(fresh_cluster) -> None:
    """SIGSTOP the GCS: a request to it fails within the documented detection bound, and
    the raylet, whose heartbeat is outstanding, notices it too."""
    cellfleet.shutdown()  # the module's cluster: this test wants one of its own
    info = fresh_cluster(num_cpus=1)
    core = _context.core
    gcs = gcs_process()

    async def ask_the_paused_gcs() -> tuple[float, str]:
        conn = await connect(core.gcs_address, core.token)
        assert await conn.request(m.GetNodes())  # it answers while it runs
        gcs.send_signal(signal.SIGSTOP)
        start = time.monotonic()
        try:
            await conn.request(m.WaitActor(b"a" * 16), timeout=math.inf)
        except ConnectionError as exc:
            assert conn.pending_requests == 0 and not conn.is_open
            return time.monotonic() - start, str(exc)
        raise AssertionError("a paused GCS answered")

    try:
        elapsed, error = asyncio.run(asyncio.wait_for(
            ask_the_paused_gcs(), DEFAULT_LIMITS.detection_bound_s + 15))
        assert "did not answer a keepalive ping within 10 s" in error
        assert "WaitActor" in error and "paused" in error
        assert DEFAULT_LIMITS.ping_idle_s <= elapsed
        wait_until(lambda: "closed as unresponsive" in log_of(info, "raylet"), timeout=30,
                   message="the raylet to notice the paused GCS")
    finally:
        gcs.send_signal(signal.SIGCONT)
    cellfleet.shutdown()
    wait_until(lambda: not runtime_processes(), timeout=15, message="every process to exit")
