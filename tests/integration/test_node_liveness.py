"""A node paused past the heartbeat timeout (SIGSTOP) is declared dead, then comes back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import wait_until

import cellfleet
from cellfleet import _messages as m
from cellfleet._rpc import connect
from cellfleet._session import Session

pytestmark = pytest.mark.integration

NODE_TIMEOUT_S = 3.0

SECOND_DRIVER = """
import sys, cellfleet
cellfleet.init(address=sys.argv[1])

@cellfleet.remote
def square(x):
    return x * x

print(cellfleet.get(square.remote(7), timeout=30))
cellfleet.shutdown()
"""


@cellfleet.remote
def add_one(x: int) -> int:
    return x + 1


def node_alive(address: str, token: bytes) -> dict[bytes, bool]:
    async def ask() -> list:
        conn = await connect(address, token, timeout=5)
        try:
            return await asyncio.wait_for(conn.request(m.GetNodes()), 5)
        finally:
            conn.close()

    return {node["node_id"]: node["alive"] for node in asyncio.run(ask())}


def test_a_paused_node_registers_again_and_serves_a_second_driver(fresh_cluster,
                                                                  monkeypatch) -> None:
    monkeypatch.setenv("CELLFLEET_NODE_TIMEOUT_S", str(NODE_TIMEOUT_S))
    info = fresh_cluster(num_cpus=1, object_store_memory=64 * 2**20)
    assert cellfleet.get(add_one.remote(1), timeout=30) == 2
    session = Session(Path(info["session_dir"]))
    address, token = info["gcs_address"], session.token()
    node_id = bytes.fromhex(info["node_id"])
    raylet_pid = session.info()["pids"][1]

    os.kill(raylet_pid, signal.SIGSTOP)
    try:
        wait_until(lambda: not node_alive(address, token)[node_id],
                   timeout=NODE_TIMEOUT_S + 15, message="the GCS to declare the paused node dead")
    finally:
        os.kill(raylet_pid, signal.SIGCONT)
    wait_until(lambda: node_alive(address, token).get(node_id), timeout=15,
               message="the resumed raylet to register again")

    second = subprocess.run([sys.executable, "-c", SECOND_DRIVER, address],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.strip().splitlines()[-1] == "49"
    assert cellfleet.get(add_one.remote(2), timeout=30) == 3  # the first driver carries on
