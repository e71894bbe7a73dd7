"""Objects that move between nodes: three nodes on 127.0.0.1-3, each its own raylet and store.

A task on one node takes an object stored on another, the driver gets an object made
elsewhere, and a copy pulled to a node is a secondary that the owner knows of and frees with
the object, while the node that made the object keeps the primary.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import cloudpickle
import numpy as np
import pytest
from helpers import wait_until

import cellfleet as ray
from cellfleet import _messages as m
from cellfleet import exceptions
from cellfleet.cluster_utils import Cluster
from cellfleet.util.state import list_tasks

pytestmark = pytest.mark.integration
cloudpickle.register_pickle_by_value(sys.modules[__name__])

MiB = 2**20


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head (1 CPU) and two nodes with resources "b" and "c" (1 CPU each)."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1, resources={"b": 1})
    cluster.add_node(num_cpus=1, resources={"c": 1})
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def store_used(address: str) -> int:
    """Bytes in use in the store of the node whose raylet is at ``address``."""
    core = ray._context.core

    async def ask() -> int:
        conn = await core.peers.connect(address)
        return (await conn.request(m.GetNodeStats()))["store"]["used"]

    return core.run(ask(), timeout=10)


def stored_ids(address: str) -> set[str]:
    """Ids of the largest objects in the store of the node whose raylet is at ``address``."""
    core = ray._context.core

    async def ask() -> list:
        conn = await core.peers.connect(address)
        return (await conn.request(m.GetNodeStats()))["store"]["largest"]

    return {row[0] for row in core.run(ask(), timeout=10)}


@ray.remote
def checksum(array: np.ndarray) -> tuple[int, str]:
    return int(array.sum()), ray.get_runtime_context().get_node_id()


@ray.remote
def checksum_here(array: np.ndarray) -> tuple[int, str]:
    return int(array.sum()), ray.get_runtime_context().get_node_id()


@ray.remote
def make(n: int, value: int) -> np.ndarray:
    return np.full(n, value, dtype=np.uint8)


def test_a_task_on_another_node_reads_an_object_the_driver_put(cluster):
    b = cluster.worker_nodes[0]
    array = np.arange(24 * MiB, dtype=np.uint8)  # several chunks
    ref = ray.put(array)
    total, node = ray.get(checksum.options(resources={"b": 1}).remote(ref), timeout=60)
    assert node == b.node_id and total == int(array.sum())


def test_the_driver_gets_an_object_made_on_another_node(cluster):
    value = ray.get(make.options(resources={"c": 1}).remote(9 * MiB + 123, 7), timeout=60)
    assert value.shape == (9 * MiB + 123,) and value[0] == 7 and value[-1] == 7
    assert not value.flags.writeable  # a zero-copy view of this node's copy


def test_an_object_moves_from_one_worker_node_to_another(cluster):
    made_on_c = make.options(resources={"c": 1}).remote(5 * MiB, 3)
    total, node = ray.get(checksum.options(resources={"b": 1}).remote(made_on_c), timeout=60)
    assert node == cluster.worker_nodes[0].node_id and total == 3 * 5 * MiB


def test_a_pulled_copy_stays_as_a_secondary_until_the_owner_frees_the_object(cluster):
    c = cluster.worker_nodes[1]
    head = cluster.head_node
    ref = make.options(resources={"c": 1}).remote(20 * MiB, 1)
    ray.wait([ref], timeout=60)
    value, made = ray.get(ref, timeout=60), ref.hex()
    assert made in stored_ids(head.address)  # the copy, pinned by the view
    del value
    directory, object_id = ray._context.core.directory, ref._id
    wait_until(lambda: directory.holders(object_id), timeout=10,
               message="the owner to learn of the copy")
    assert directory.holders(object_id) == [head.address]
    assert made in stored_ids(head.address)  # kept, unread, as a secondary copy
    assert made in stored_ids(c.address)  # the primary, still referenced
    assert ray.get(ref, timeout=60)[0] == 1  # read from the copy here
    del ref
    wait_until(lambda: store_used(c.address) == 0, timeout=10, message="the primary freed")
    wait_until(lambda: made not in stored_ids(head.address), timeout=10,
               message="the secondary copy freed")


def test_reading_an_object_whose_only_node_is_gone_raises_object_lost(cluster):
    node = cluster.add_node(num_cpus=1, resources={"d": 1})
    ref = make.options(resources={"d": 1}, max_retries=0).remote(2 * MiB, 5)  # not rebuilt
    ray.wait([ref], timeout=60)
    cluster.remove_node(node, allow_graceful=False)
    with pytest.raises(exceptions.ObjectLostError):
        ray.get(ref, timeout=60)


def test_a_task_goes_to_the_node_that_holds_its_large_argument(cluster):
    c = cluster.worker_nodes[1]
    made_on_c = make.options(resources={"c": 1}).remote(8 * MiB, 2)
    ray.wait([made_on_c], timeout=60, fetch_local=False)
    # No resources asked for; a function never run before, so no wait estimate competes.
    total, node = ray.get(checksum_here.remote(made_on_c), timeout=60)
    assert total == 2 * 8 * MiB and node == c.node_id
    reasons = [t.get("placement_reason", "") for t in list_tasks(limit=10_000)
               if t.get("name") == "checksum_here" and t.get("node_id") == c.node_id]
    assert any("locality" in r and "holds 8 MB of the arguments" in r for r in reasons), reasons


def test_a_large_pull_reports_its_progress_to_the_front_end(cluster, monkeypatch):
    calls: list[tuple] = []
    monkeypatch.setattr(ray._context, "copy_progress", lambda *call: calls.append(call))
    ref = make.options(resources={"c": 1}).remote(96 * MiB, 4)
    ray.wait([ref], timeout=60, fetch_local=False)
    assert ray.get(ref, timeout=60)[0] == 4
    c = cluster.worker_nodes[1]
    assert calls, "no progress was reported"
    done, total, label = calls[-1]
    assert done == total >= 96 * MiB and label == f"pulling 0.1 GB from {c.address}"
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))  # it only goes forward
