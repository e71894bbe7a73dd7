"""Lineage reconstruction on a real cluster: a node dies with the only copy of a task's output,
and the owner runs the task again on a node that is left (within ``max_retries``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import cloudpickle
import numpy as np
import pytest
from helpers import wait_until

import cellfleet as ray
from cellfleet import exceptions
from cellfleet.cluster_utils import Cluster
from cellfleet.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.integration
cloudpickle.register_pickle_by_value(sys.modules[__name__])

MiB = 2**20


@pytest.fixture
def two_workers() -> Iterator[Cluster]:
    """A head with no CPU for tasks, and two nodes that both have resource "x"."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    cluster.add_node(num_cpus=1, resources={"x": 1})
    cluster.add_node(num_cpus=1, resources={"x": 1})
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@ray.remote(resources={"x": 1})
def scaled(array: np.ndarray, factor: int) -> np.ndarray:
    return array * factor


@ray.remote(resources={"x": 1}, max_retries=0)
def once(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.uint8)


def node_holding(ref: ray.ObjectRef) -> str:
    return ray._context.core.refs.entries[ref._id].payload[3].hex()


def kill_node(cluster: Cluster, node_id: str) -> None:
    (node,) = [n for n in cluster.worker_nodes if n.node_id == node_id]
    cluster.remove_node(node, allow_graceful=False)


def test_a_lost_output_is_rebuilt_from_its_lineage(two_workers):
    source = ray.put(np.arange(4 * MiB, dtype=np.uint8))  # on the head: survives
    ref = scaled.remote(source, 2)
    ray.wait([ref], timeout=60, fetch_local=False)
    lost_on = node_holding(ref)
    kill_node(two_workers, lost_on)
    value = ray.get(ref, timeout=60)
    assert value[1] == 2 and value.nbytes == 4 * MiB
    assert node_holding(ref) != lost_on  # made again on the node that is left


def test_a_chain_of_three_lost_with_its_node_is_rebuilt_link_by_link(two_workers):
    first = scaled.options(resources={"x": 1}).remote(np.ones(3 * MiB, dtype=np.uint8), 3)
    ray.wait([first], timeout=60, fetch_local=False)
    on = node_holding(first)
    strategy = NodeAffinitySchedulingStrategy(on, soft=True)  # the other links there too
    second = scaled.options(scheduling_strategy=strategy).remote(first, 2)
    third = scaled.options(scheduling_strategy=strategy).remote(second, 5)
    ray.wait([third], timeout=60, fetch_local=False)
    assert node_holding(second) == node_holding(third) == on
    kill_node(two_workers, on)
    value = ray.get(third, timeout=60)  # all three run again on the node that is left
    assert value[0] == 30 and node_holding(first) != on and node_holding(second) != on


def test_an_output_of_a_task_without_retries_is_lost_for_good(two_workers):
    ref = once.remote(2 * MiB)
    ray.wait([ref], timeout=60, fetch_local=False)
    kill_node(two_workers, node_holding(ref))
    with pytest.raises(exceptions.ObjectReconstructionFailedMaxAttemptsExceededError):
        ray.get(ref, timeout=60)


def test_a_lost_put_object_cannot_be_rebuilt(two_workers):
    @ray.remote(resources={"x": 1})
    def put_there() -> list:
        return [ray.put(np.ones(2 * MiB, dtype=np.uint8))]

    (inner,) = ray.get(put_there.remote(), timeout=60)
    ray.wait([inner], timeout=60, fetch_local=False)
    kill_node(two_workers, node_holding_borrowed(inner))
    with pytest.raises(exceptions.ObjectLostError):  # its owner (the worker) died with it
        ray.get(inner, timeout=60)


def node_holding_borrowed(ref: ray.ObjectRef) -> str:
    """The node of a borrowed object's owner (a put object lives where its owner runs)."""
    core = ray._context.core
    owner = core.refs.entries[ref._id].owner
    for node in ray.nodes():
        if node["Alive"] and owner.startswith(node["NodeManagerAddress"] + ":"):
            return node["NodeID"]
    raise AssertionError(f"no node at the owner's address {owner}")


@ray.remote(resources={"x": 1})
class Keeper:
    def __init__(self, kept: list) -> None:
        self.kept = kept  # a borrowed ref, held here

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()


def test_borrows_on_a_dead_node_end_with_it(two_workers):
    core = ray._context.core
    obj = ray.put(np.ones(2 * MiB, dtype=np.uint8))
    keeper = Keeper.remote([obj])
    node = ray.get(keeper.node.remote(), timeout=60)
    wait_until(lambda: core.refs.entries[obj._id].borrowers, message="the actor's borrow")
    kill_node(two_workers, node)
    wait_until(lambda: not core.refs.entries[obj._id].borrowers, timeout=30,
               message="the dead node's borrow dropped")


def test_past_the_lineage_cap_an_output_is_refused_reconstruction(two_workers, monkeypatch):
    ray.shutdown()
    monkeypatch.setenv("CELLFLEET_MAX_LINEAGE", "1")  # the owner keeps one task's lineage
    ray.init(address=two_workers.address)
    first = scaled.remote(np.ones(2 * MiB, dtype=np.uint8), 2)
    ray.wait([first], timeout=60, fetch_local=False)
    second = scaled.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        node_holding(first), soft=True)).remote(np.ones(2 * MiB, dtype=np.uint8), 3)
    ray.wait([second], timeout=60, fetch_local=False)  # its lineage evicts the first's
    kill_node(two_workers, node_holding(first))
    with pytest.raises(exceptions.ObjectReconstructionFailedLineageEvictedError,
                       match="lineage has been evicted"):
        ray.get(first, timeout=60)
    assert ray.get(second, timeout=60)[0] == 3  # the newest lineage is kept: rebuilt


@ray.remote(resources={"x": 1})
class Maker:
    """Owns what it puts; the driver borrows it."""

    def make(self) -> list:
        return [ray.put(np.ones(2 * MiB, dtype=np.uint8))]

    def pid(self) -> int:
        import os

        return os.getpid()


def test_an_object_whose_owner_died_fails_with_owner_died(two_workers):
    import os
    import signal

    maker = Maker.options(max_restarts=0).remote()
    (inner,) = ray.get(maker.make.remote(), timeout=60)
    os.kill(ray.get(maker.pid.remote(), timeout=60), signal.SIGKILL)  # the owner, not a node
    with pytest.raises(exceptions.OwnerDiedError) as caught:
        ray.get(inner, timeout=60)
    assert isinstance(caught.value, exceptions.ObjectLostError)


def test_a_borrower_has_a_lost_object_rebuilt_by_its_owner(two_workers):
    @ray.remote  # its CPU is lent while it waits; the re-run needs the node's only "x"
    def first_byte(boxed: list) -> int:
        return int(ray.get(boxed[0], timeout=60)[0])  # a borrowed ref, read in the task

    source = scaled.remote(np.full(3 * MiB, 2, dtype=np.uint8), 2)
    ray.wait([source], timeout=60, fetch_local=False)
    kill_node(two_workers, node_holding(source))
    assert ray.get(first_byte.remote([source]), timeout=60) == 4


def test_a_task_whose_argument_was_lost_waits_for_it_to_be_made_again(two_workers):
    source = scaled.remote(np.full(3 * MiB, 1, dtype=np.uint8), 5)
    ray.wait([source], timeout=60, fetch_local=False)
    kill_node(two_workers, node_holding(source))
    assert ray.get(scaled.remote(source, 2), timeout=60)[0] == 10
