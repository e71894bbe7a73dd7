"""SPREAD of short tasks (pipelined two deep on each worker) still reaches every node of the
cluster (three nodes on 127.0.0.1-3) that has a worker ready. (A node whose first worker is
still starting when a burst of a few milliseconds is over cannot take part: the warm-up
makes sure each has one.)"""

from __future__ import annotations

from collections import Counter

import pytest
from helpers import wait_until

import cellfleet as ray
from cellfleet.cluster_utils import Cluster

pytestmark = pytest.mark.integration


@ray.remote(scheduling_strategy="SPREAD")
def node_of() -> str:
    return ray.get_runtime_context().get_node_id()


def test_short_spread_tasks_reach_every_node() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address)
        every = {n.node_id for n in cluster.list_all_nodes()}
        wait_until(lambda: set(ray.get([node_of.remote() for _ in range(30)], timeout=60))
                   == every, timeout=60, message="a task run on every node")
        where = Counter(ray.get([node_of.remote() for _ in range(600)], timeout=60))
        assert set(where) == every, where
        assert min(where.values()) >= 20, where  # none starved (an even share is 200)
    finally:
        ray.shutdown()
        cluster.shutdown()
