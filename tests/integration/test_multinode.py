"""Several nodes on this machine, each a raylet with its own store and workers on its own
loopback address (127.0.0.1, .2, .3...): nodes join, work spills back between them, the
scheduling strategies place it, infeasible work waits for a node that fits.

Objects stored in another node's shared memory cannot be read until objects move between
nodes, so every value returned here is small (inline, well under 100 KB).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from gates import touch, wait_for_file
from helpers import wait_until

import cellfleet as ray
from cellfleet import exceptions
from cellfleet.cluster_utils import Cluster
from cellfleet.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from cellfleet.util.state import list_tasks

pytestmark = pytest.mark.integration


@ray.remote
def node_of() -> str:
    return ray.get_runtime_context().get_node_id()


@ray.remote
def node_after(gate: str) -> str:
    touch(gate + "." + str(os.getpid()))
    wait_for_file(gate)
    return ray.get_runtime_context().get_node_id()


def placements(name: str) -> list[tuple[str, str]]:
    """(node id, placement reason) of the finished tasks called ``name``."""
    return [(t["node_id"], t.get("placement_reason", "")) for t in list_tasks(limit=10_000)
            if t.get("name") == name and t["state"] == "FINISHED"]


@pytest.fixture(scope="module")
def three_nodes() -> Iterator[Cluster]:
    """A head with 1 CPU, a node with 1 CPU and resource "a", a node with 2 CPUs."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1, resources={"a": 2})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_nodes_join_with_their_own_addresses(three_nodes):
    head, with_a, big = three_nodes.list_all_nodes()
    nodes = {n["NodeID"]: n for n in ray.nodes()}
    assert set(nodes) == {head.node_id, with_a.node_id, big.node_id}
    assert all(n["Alive"] for n in nodes.values())
    assert [nodes[n.node_id]["NodeManagerAddress"] for n in (head, with_a, big)] == \
        ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert nodes[with_a.node_id]["Resources"]["a"] == 2
    assert "node:__internal_head__" not in nodes[big.node_id]["Resources"]
    assert ray.cluster_resources()["CPU"] == 4


def test_a_task_needing_a_custom_resource_runs_on_the_node_that_has_it(three_nodes):
    with_a = three_nodes.worker_nodes[0]
    assert ray.get([node_of.options(resources={"a": 1}).remote() for _ in range(4)],
                   timeout=30) == [with_a.node_id] * 4
    ray.get(node_of.remote(), timeout=30)
    wait_until(lambda: len(placements("node_of")) >= 5, message="the tasks' events")
    reasons = {reason for node, reason in placements("node_of") if node == with_a.node_id}
    head = three_nodes.head_node.node_id[:8]
    assert f"spilled back from {head}: it has no a" in reasons


def test_a_busy_node_spills_work_back_to_free_nodes(three_nodes, tmp_path):
    gate = str(tmp_path / "gate")
    refs = [node_after.remote(gate) for _ in range(4)]  # 4 CPUs in the cluster
    wait_until(lambda: len(list(tmp_path.glob("gate.*"))) == 4, timeout=30,
               message="4 tasks running at once")
    touch(gate)
    ran_on = ray.get(refs, timeout=30)
    assert set(ran_on) == {n.node_id for n in three_nodes.list_all_nodes()}
    reasons = [reason for _, reason in placements("node_after")]
    assert "local" in reasons and any(r.startswith("spilled back from") for r in reasons)


def test_spread_spreads_over_every_node(three_nodes, tmp_path):
    # Tasks taking no CPU fit every node at any time: SPREAD goes round robin over them all.
    gate = str(tmp_path / "gate")
    spread = node_after.options(scheduling_strategy="SPREAD", num_cpus=0)
    refs = [spread.remote(gate) for _ in range(6)]
    wait_until(lambda: len(list(tmp_path.glob("gate.*"))) == 6, timeout=30,
               message="6 tasks running")
    touch(gate)
    ran_on = ray.get(refs, timeout=30)
    assert sorted(ran_on.count(n.node_id) for n in three_nodes.list_all_nodes()) == [2, 2, 2]
    assert {reason for _, reason in placements("node_after")} >= {"SPREAD"}


def test_node_affinity_pins_tasks_and_actors(three_nodes):
    big = three_nodes.worker_nodes[1]
    hard = NodeAffinitySchedulingStrategy(big.node_id, soft=False)
    assert set(ray.get([node_of.options(scheduling_strategy=hard).remote() for _ in range(6)],
                       timeout=30)) == {big.node_id}
    nowhere = NodeAffinitySchedulingStrategy("ab" * 16, soft=False)
    with pytest.raises(exceptions.TaskUnschedulableError, match="not part of this cluster"):
        ray.get(node_of.options(scheduling_strategy=nowhere).remote(), timeout=30)
    soft = NodeAffinitySchedulingStrategy("ab" * 16, soft=True)
    assert ray.get(node_of.options(scheduling_strategy=soft).remote(), timeout=30)

    @ray.remote(num_cpus=0)
    class Where:
        def node(self) -> str:
            return ray.get_runtime_context().get_node_id()

    actor = Where.options(scheduling_strategy=hard).remote()
    assert ray.get(actor.node.remote(), timeout=30) == big.node_id
    wait_until(lambda: any(r == "NodeAffinity(hard)" for _, r in placements("Where.__init__")),
               message="the actor's placement event")


def test_actors_on_other_nodes_are_called_from_a_third(three_nodes):
    with_a, big = three_nodes.worker_nodes

    @ray.remote(resources={"a": 1})
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def add(self) -> tuple[int, str]:
            self.n += 1
            return self.n, ray.get_runtime_context().get_node_id()

    @ray.remote
    def call(counter) -> tuple[int, str]:
        return ray.get(counter.add.remote(), timeout=30)

    counter = Counter.remote()
    assert ray.get(counter.add.remote(), timeout=30) == (1, with_a.node_id)
    pin = NodeAffinitySchedulingStrategy(big.node_id, soft=False)
    assert ray.get(call.options(scheduling_strategy=pin).remote(counter), timeout=30) == \
        (2, with_a.node_id)


def test_nested_tasks_spill_back_from_the_node_they_run_on(three_nodes):
    with_a, big = three_nodes.worker_nodes

    @ray.remote
    def hop() -> tuple[str, str]:
        here = ray.get_runtime_context().get_node_id()
        return here, ray.get(node_of.options(resources={"a": 1}).remote(), timeout=30)

    pin = NodeAffinitySchedulingStrategy(big.node_id, soft=False)
    assert ray.get(hop.options(scheduling_strategy=pin).remote(), timeout=30) == \
        (big.node_id, with_a.node_id)
    wait_until(lambda: any(reason == f"spilled back from {big.node_id[:8]}: it has no a"
                           for _, reason in placements("node_of")),
               message="the nested task's placement, decided by the node it was submitted on")
