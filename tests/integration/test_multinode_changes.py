"""Clusters that change: a node that fits infeasible work joins, a node is removed, a node
joins from the command line; and nothing is left running afterwards. Values stay small, as in
``test_multinode``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from gates import touch, wait_for_file
from helpers import free_port, runtime_processes, wait_until
from test_multinode import node_of

import cellfleet as ray
from cellfleet._session import Session, root_dir
from cellfleet._shm import SHM_DIR
from cellfleet.cluster_utils import Cluster
from cellfleet.util.state import list_tasks

pytestmark = pytest.mark.integration


def test_infeasible_work_waits_until_a_node_that_fits_joins():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        ray.init(address=cluster.address)
        ref = node_of.options(resources={"b": 1}).remote()

        @ray.remote(num_cpus=0, resources={"b": 1})
        class NeedsB:
            def node(self) -> str:
                return ray.get_runtime_context().get_node_id()

        actor = NeedsB.remote()
        ready, _ = ray.wait([ref], timeout=1)
        assert not ready
        wait_until(lambda: {t["name"] for t in list_tasks()
                            if "no node of the cluster (1 node(s)) has the resources"
                            in (t.get("placement_reason") or "")} == {"node_of",
                                                                      "NeedsB.__init__"},
                   message="the waiting task's and actor's records to say why they wait")
        node = cluster.add_node(num_cpus=1, resources={"b": 2})
        assert ray.get(ref, timeout=30) == node.node_id
        assert ray.get(actor.node.remote(), timeout=30) == node.node_id
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_removed_node_is_dead_and_work_goes_on_elsewhere():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        doomed = cluster.add_node(num_cpus=1, resources={"a": 1})
        ray.init(address=cluster.address)
        assert ray.get(node_of.options(resources={"a": 1}).remote(), timeout=30) == \
            doomed.node_id
        pids = {p.pid for p in runtime_processes() if doomed.session_dir in
                " ".join(p.cmdline())}
        assert pids
        cluster.remove_node(doomed, allow_graceful=False)
        (dead,) = [n for n in ray.nodes() if n["NodeID"] == doomed.node_id]
        assert not dead["Alive"]
        wait_until(lambda: not {p.pid for p in runtime_processes()} & pids,
                   message="the removed node's processes to exit")
        assert ray.get(node_of.remote(), timeout=30) == cluster.head_node.node_id
        cluster.wait_for_nodes()
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_task_whose_node_dies_is_retried_on_another_node(tmp_path):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        nodes = [cluster.add_node(num_cpus=1, resources={"r": 1}) for _ in range(2)]
        ray.init(address=cluster.address)
        gate = str(tmp_path / "gate")

        @ray.remote(resources={"r": 1}, max_retries=1)
        def survive() -> str:
            here = ray.get_runtime_context().get_node_id()
            touch(f"{gate}.{here}")
            wait_for_file(gate)
            return here

        ref = survive.remote()
        started = wait_until(lambda: list(tmp_path.glob("gate.*")), timeout=30,
                             message="the task to start")
        first = started[0].name.split(".")[1]
        (doomed,) = [n for n in nodes if n.node_id == first]
        cluster.remove_node(doomed, allow_graceful=False)
        touch(gate)
        (other,) = [n.node_id for n in nodes if n is not doomed]
        assert ray.get(ref, timeout=30) == other
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_node_of_another_version_is_refused_and_the_head_carries_on():
    from cellfleet import _messages as m
    from cellfleet._rpc import connect
    from cellfleet.api import _in_thread

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        token = cluster.head_node._processes.session.token()

        async def register(version: str) -> object:
            conn = await connect(cluster.address, token)
            try:
                return await conn.request(m.RegisterNode(b"x" * 16, "127.0.0.9:1", {"CPU": 1.0},
                                                         "none", 1 << 20, "/nowhere", version))
            finally:
                conn.close()

        with pytest.raises(ValueError, match="runs cellfleet 0.0.1 but the cluster's head runs"):
            _in_thread(register("0.0.1"))
        assert cluster._alive_nodes() == {cluster.head_node.node_id}
    finally:
        cluster.shutdown()


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cellfleet.cli", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_cli_joins_a_node_to_a_head_and_stops_both(tmp_path):
    port = free_port()
    head = cli("start", "--head", "--port", str(port), "--num-cpus", "1")
    try:
        assert head.returncode == 0, head.stderr
        address = f"127.0.0.1:{port}"
        wrong = tmp_path / "wrong-token"
        wrong.write_text("0" * 64)
        refused = cli("start", "--address", address, "--token-file", str(wrong))
        assert refused.returncode == 2 and "refused this node's token" in refused.stderr
        joined = cli("start", "--address", address, "--host", "127.0.0.2", "--num-cpus", "1",
                     "--resources", '{"x": 1}', "--object-store-memory", str(64 * 2**20))
        assert joined.returncode == 0, joined.stderr
        assert "joined to the cluster at " + address in joined.stdout
        status = cli("status", "--address", address)
        assert "2 of 2 node(s) alive" in status.stdout, status.stdout + status.stderr
        assert "127.0.0.2:" in status.stdout and "load" in status.stdout
        ray.init(address=address)
        try:
            (x_node,) = [n for n in ray.nodes() if n["NodeManagerAddress"] == "127.0.0.2"]
            assert ray.get(node_of.options(resources={"x": 1}).remote(), timeout=30) == \
                x_node["NodeID"]
        finally:
            ray.shutdown()
    finally:
        stopped = cli("stop")
    assert stopped.returncode == 0 and stopped.stdout.count("Stopped") == 2, stopped.stdout
    assert "the node 127.0.0.2:" in stopped.stdout


def test_nothing_is_left_running():
    wait_until(lambda: not runtime_processes(), timeout=15,
               message="every node's processes to exit")
    sessions = [Session(path) for path in root_dir().glob("session_*")]
    assert sessions
    assert not [arena for session in sessions
                for arena in Path(SHM_DIR).glob(f"{session.arena_prefix}*")]
