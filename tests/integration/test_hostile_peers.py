"""Hostile local peers against a cluster started with ``cellfleet start``.

The relay attack: the cluster's GCS dies; its raylet keeps dialing the GCS's port to
reconnect. Another local user (``nobody``) binds that port, answers the raylet with a live
worker's challenge, and forwards the raylet's answer to the worker, hoping to be let in and
push a pickle. Proofs are bound to the server's address and identity, so the worker must
refuse the relayed proof.

The flood: more idle connections than the node's open-file limit allows. Each listener keeps
a bounded number of connections in the handshake, so the node keeps serving its own driver.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import resource
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from helpers import free_port, wait_until

import cellfleet
from cellfleet import _messages as m
from cellfleet._protocol import encode_frame
from cellfleet._rpc import connect
from cellfleet._session import Session

pytestmark = pytest.mark.integration

ATTACKER = textwrap.dedent("""
    import os, socket, sys
    if os.getuid() == 0 and sys.argv[4] == "drop":
        os.setgid(65534)
        os.setuid(65534)
    gcs_port, worker_host, worker_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    frames = sys.stdin.buffer.read()

    def exactly(sock, size):
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                return data
            data += chunk
        return data

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", gcs_port))
    listener.listen(8)
    print("LISTENING uid=%d" % os.getuid(), flush=True)
    listener.settimeout(30)
    victim, _ = listener.accept()
    victim.settimeout(10)
    worker = socket.create_connection((worker_host, worker_port), timeout=10)
    challenge = exactly(worker, 56)
    victim.sendall(challenge)
    answer = exactly(victim, 72)
    worker.sendall(answer + frames)
    proof = exactly(worker, 32)
    print("AUTHENTICATED" if len(proof) == 32 else "REFUSED", flush=True)
""")


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _cli(*args: str, fd_limit: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        if fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    return subprocess.run([sys.executable, "-m", "cellfleet.cli", *args], capture_output=True,
                          text=True, timeout=60, preexec_fn=limit)


@cellfleet.remote
def add_one(x: int) -> int:
    return x + 1


def _worker_address(gcs_address: str, token: bytes) -> str:
    async def ask() -> str:
        gcs = await connect(gcs_address, token)
        nodes = await gcs.request(m.GetNodes())
        gcs.close()
        raylet = await connect(nodes[0]["raylet_address"], token)
        stats = await raylet.request(m.GetNodeStats())
        raylet.close()
        return next((w["address"] for w in stats["workers"] if w["address"]), "")

    return asyncio.run(ask())


def test_a_relayed_handshake_does_not_let_another_user_in(tmp_path: Path) -> None:
    port = free_port()
    gcs_address = f"127.0.0.1:{port}"
    attacker = None
    try:
        started = _cli("start", "--head", "--port", str(port), "--num-cpus", "1")
        assert started.returncode == 0, started.stderr
        session = Session.current()
        assert session is not None
        token = session.token()
        worker = wait_until(lambda: _worker_address(gcs_address, token), timeout=30,
                            message="a registered worker")
        worker_host, _, worker_port = worker.rpartition(":")
        gcs = next(p for p in psutil.process_iter(["cmdline"])
                   if "cellfleet.gcs" in " ".join(p.info["cmdline"] or [])
                   and session.name in " ".join(p.info["cmdline"] or []))
        os.kill(gcs.pid, signal.SIGKILL)
        gcs.wait(10)

        marker = tmp_path / "pwned"
        tmp_path.chmod(0o777)  # the attacker's payload could write here if it ever ran
        payload = pickle.dumps(_RunsCode(marker))
        frames = (encode_frame(m.encode(m.DefineFunctions([[b"f" * 16, "f", payload]]), 0))
                  + encode_frame(m.encode(m.PushTasks([payload]), 0)))
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        drop = "drop" if os.getuid() == 0 and python == "/usr/bin/python3" else "keep"
        attacker = subprocess.Popen(
            [python, "-c", ATTACKER, str(port), worker_host, worker_port, drop],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = attacker.communicate(frames, timeout=60)
        assert attacker.returncode == 0, err.decode()
        lines = out.decode().split()
        assert lines[0] == "LISTENING", out
        if drop == "drop":
            assert "uid=65534" in lines[1], "the attacker did not run as another user"
        assert lines[-1] == "REFUSED", "the worker accepted a relayed handshake"
        assert not marker.exists(), "the worker unpickled the attacker's payload"
    finally:
        if attacker is not None and attacker.poll() is None:
            attacker.kill()
            attacker.wait()
        _cli("stop", "--all")


def test_an_idle_connection_flood_past_the_fd_limit_does_not_wedge_the_node() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4096:
        pytest.skip("this test's own process needs more than 1,100 descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = free_port()
    flood: list[socket.socket] = []
    try:
        started = _cli("start", "--head", "--port", str(port), "--num-cpus", "1", fd_limit=1024)
        assert started.returncode == 0, started.stderr
        session = Session.current()
        assert session is not None
        raylet = _raylet_address(f"127.0.0.1:{port}", session.token())
        host, _, raylet_port = raylet.rpartition(":")
        for _ in range(1100):
            flood.append(socket.create_connection((host, int(raylet_port)), timeout=10))
        cellfleet.init(address=f"127.0.0.1:{port}")
        assert cellfleet.get(add_one.remote(1), timeout=30) == 2
        log = "".join(p.read_text(errors="replace") for p in session.logs.glob("raylet*"))
        assert log.count("refused") <= 3, "every refused connection was logged"
    finally:
        for sock in flood:
            sock.close()
        if cellfleet.is_initialized():
            cellfleet.shutdown()
        _cli("stop", "--all")
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _raylet_address(gcs_address: str, token: bytes) -> str:
    async def ask() -> str:
        gcs = await connect(gcs_address, token)
        nodes = await gcs.request(m.GetNodes())
        gcs.close()
        return nodes[0]["raylet_address"]

    return asyncio.run(ask())
