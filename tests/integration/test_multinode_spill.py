"""An object spilled to disk on the node that made it is still read from other nodes: the
holder reads it back into its store and serves it, where it used to count as a failed pull
(and the object as lost). Two nodes on 127.0.0.1-2; the second has a small store."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import cloudpickle
import numpy as np
import pytest

import cellfleet as ray
from cellfleet import _messages as m
from cellfleet.cluster_utils import Cluster

pytestmark = pytest.mark.integration
cloudpickle.register_pickle_by_value(sys.modules[__name__])

MiB = 2**20


@pytest.fixture
def cluster(tmp_path, monkeypatch) -> Iterator[Cluster]:
    monkeypatch.setenv("CELLFLEET_SPILL_DIR", str(tmp_path))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1, resources={"small": 1}, object_store_memory=64 * MiB)
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@ray.remote(resources={"small": 1}, max_retries=0)  # made once: a lost one cannot come back
def make(value: int) -> np.ndarray:
    return np.full(24 * MiB, value, dtype=np.uint8)


@ray.remote(num_cpus=1, resources={})
def first_and_last(array: np.ndarray) -> tuple[int, int]:
    return int(array[0]), int(array[-1])


def store_of(node) -> dict:
    core = ray._context.core

    async def ask() -> dict:
        conn = await core.peers.connect(node.address)
        return (await conn.request(m.GetNodeStats()))["store"]

    return core.run(ask(), timeout=10)


def test_objects_spilled_on_their_node_are_read_back_for_other_nodes(cluster) -> None:
    small = cluster.list_all_nodes()[1]
    refs = [make.remote(i) for i in range(6)]  # 144 MiB made in a 64 MiB store
    ray.wait(refs, num_returns=len(refs), fetch_local=False, timeout=60)
    assert store_of(small)["spilled"] >= 3
    for i, ref in enumerate(refs):  # on the driver's node, pulled from the spilled holder
        value = ray.get(ref, timeout=60)
        assert (int(value[0]), int(value[-1])) == (i, i)
        del value
    assert ray.get([first_and_last.remote(ref) for ref in refs], timeout=60) == [
        (i, i) for i in range(6)]
    assert store_of(small)["restored_total"] >= 3
