"""Two real hosts: network namespaces the test creates, joined by a veth pair.

The head runs in one namespace (10.200.0.1), a node in the other (10.200.0.2) joins it with
``cellfleet start --address`` over the veth; a driver in the head's namespace runs a task on
the far node and moves a numpy array of a few MB each way. Neither namespace can reach the
machine's network: all traffic stays on the veth (and each namespace's own loopback). The
namespaces, the veth and every process in them are removed at the end, even on failure.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_until

pytestmark = pytest.mark.integration

SUBNET = "10.200.0"
GCS_PORT = 6380
STORE_BYTES = 128 * 2**20


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def netns_pids(name: str) -> list[int]:
    found = ip("netns", "pids", name, check=False)
    return [int(pid) for pid in found.stdout.split()]


@pytest.fixture
def hosts() -> Iterator[tuple[str, str]]:
    """Two namespaces, ``(head, node)``, with 10.200.0.1 and 10.200.0.2 on a veth pair."""
    tag = secrets.token_hex(3)
    names = (f"cf-head-{tag}", f"cf-node-{tag}")
    veths = (f"cfv{tag}a", f"cfv{tag}b")
    made: list[str] = []
    try:
        for name in names:
            added = ip("netns", "add", name, check=False)
            if added.returncode != 0:
                pytest.skip(f"this machine does not permit network namespaces ('ip netns add' "
                            f"said: {added.stderr.strip() or added.returncode})")
            made.append(name)
        ip("link", "add", veths[0], "type", "veth", "peer", "name", veths[1])
        for i, (name, veth) in enumerate(zip(names, veths, strict=True), start=1):
            ip("link", "set", veth, "netns", name)
            ip("-n", name, "addr", "add", f"{SUBNET}.{i}/24", "dev", veth)
            ip("-n", name, "link", "set", veth, "up")
            ip("-n", name, "link", "set", "lo", "up")
        yield names
    finally:
        for name in made:
            for pid in netns_pids(name):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_until(lambda n=name: not netns_pids(n), timeout=10,
                       message=f"the processes of {name} to exit")
            ip("netns", "del", name, check=False)
        ip("link", "del", veths[0], check=False)  # gone with its namespace; in case it was not
        listed = ip("netns", "list").stdout
        assert not any(name in listed for name in names)
        assert all(veth not in ip("link").stdout for veth in veths)


def in_netns(name: str, argv: list[str], env: dict[str, str],
             timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout)


DRIVER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import cellfleet

    cellfleet.init(address=sys.argv[1])

    @cellfleet.remote(resources={"far": 1})
    def far(array):
        ctx = cellfleet.get_runtime_context()
        back = np.full(3 * 2**20 // 8, 7.0)
        return ctx.get_node_id(), os.readlink("/proc/self/ns/net"), float(array.sum()), back

    array = np.arange(4 * 2**20 // 8, dtype=np.float64)
    node_id, netns, total, back = cellfleet.get(far.remote(cellfleet.put(array)), timeout=60)
    nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in cellfleet.nodes() if n["Alive"]}
    print(json.dumps({"node_id": node_id, "netns": netns, "sum_ok": total == float(array.sum()),
                      "back_ok": back.shape == (3 * 2**20 // 8,) and bool((back == 7.0).all()),
                      "nodes": nodes, "driver_netns": os.readlink("/proc/self/ns/net")}))
    cellfleet.shutdown()
""")


def test_a_node_in_another_namespace_runs_tasks_and_moves_objects(
        hosts: tuple[str, str], tmp_path: Path) -> None:
    head_ns, node_ns = hosts
    root = Path(os.environ["CELLFLEET_TMPDIR"]) / f"netns-{head_ns}"
    head_env = {"CELLFLEET_TMPDIR": str(root / "head")}
    node_env = {"CELLFLEET_TMPDIR": str(root / "node")}
    cli = [sys.executable, "-m", "cellfleet.cli"]
    address = f"{SUBNET}.1:{GCS_PORT}"
    try:
        head = in_netns(head_ns, [*cli, "start", "--head", "--host", f"{SUBNET}.1", "--port",
                                  str(GCS_PORT), "--num-cpus", "1", "--object-store-memory",
                                  str(STORE_BYTES)], head_env)
        assert head.returncode == 0, head.stderr
        token_file = next((root / "head").glob("session_*/token"))
        node = in_netns(node_ns, [*cli, "start", "--address", address, "--host", f"{SUBNET}.2",
                                  "--token-file", str(token_file), "--num-cpus", "1",
                                  "--resources", '{"far": 1}', "--object-store-memory",
                                  str(STORE_BYTES)], node_env)
        assert node.returncode == 0, node.stderr
        node_id = next(line.split()[-1] for line in node.stdout.splitlines()
                       if "node id:" in line)

        script = tmp_path / "driver.py"
        script.write_text(DRIVER)
        run = in_netns(head_ns, [sys.executable, str(script), address],
                       {**head_env, "CELLFLEET_TOKEN_FILE": str(token_file)})
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout.strip().splitlines()[-1])
        node_netns = in_netns(node_ns, ["readlink", "/proc/self/ns/net"], {}).stdout.strip()
        assert result["node_id"] == node_id
        assert result["netns"] == node_netns != result["driver_netns"]
        assert result["sum_ok"] and result["back_ok"]
        assert sorted(result["nodes"].values()) == [f"{SUBNET}.1", f"{SUBNET}.2"]
    finally:
        for name, env in ((node_ns, node_env), (head_ns, head_env)):
            in_netns(name, [*cli, "stop"], env, timeout=60)
    for name in hosts:
        wait_until(lambda n=name: not netns_pids(n), timeout=15,
                   message=f"cellfleet stop to end every process in {name}")
