"""Locality-aware placement: a task goes where its large arguments are, when that node is free."""

from __future__ import annotations

from cellfleet.core.submit_queues import LOCALITY_MIN_BYTES, argument_locality
from cellfleet.raylet.cluster_scheduler import ClusterScheduler, Spill, node_name
from cellfleet.raylet.scheduler import Grant, LeaseRequest, LocalScheduler

HERE = b"\x01" * 16
B = b"\x02" * 16
MB = 10**6


def view(node_id: bytes, available: float = 1.0) -> dict:
    return {"node_id": node_id, "address": f"127.0.0.{node_id[0]}:1", "total": {"CPU": 1.0},
            "available": {"CPU": available}, "queued": 0, "alive": True}


def scheduler(*rows: dict) -> ClusterScheduler:
    local = LocalScheduler({"CPU": 1.0})
    local.worker_registered(b"w" * 4)
    s = ClusterScheduler(HERE, local)
    s.update_nodes(list(rows))
    return s


def request(locality: list | None) -> LeaseRequest:
    return LeaseRequest(1, {"CPU": 1.0}, "owner", locality=locality)


def test_a_free_node_holding_the_arguments_gets_the_task_though_this_one_is_free_too():
    (spill,) = scheduler(view(B)).request_lease(request([B, 48 * MB]))
    assert isinstance(spill, Spill) and spill.node_id == B
    assert spill.reason == f"locality: {node_name(B)} holds 48 MB of the arguments"


def test_arguments_here_keep_the_task_here_with_the_reason():
    (grant,) = scheduler(view(B)).request_lease(request([HERE, 5 * MB]))
    assert isinstance(grant, Grant) and "holds 5 MB of the arguments" in grant.request.reason


def test_a_holder_busy_for_longer_than_moving_the_arguments_does_not_hold_the_task_back():
    slow = request([B, 48 * MB])
    slow.task_s = 1.0  # its tasks take a second: moving 48 MB is quicker than waiting
    (grant,) = scheduler(view(B, available=0.0)).request_lease(slow)
    assert isinstance(grant, Grant) and grant.request.reason == "local"
    quick = request([B, 48 * MB])
    quick.task_s = 0.001  # a millisecond's wait there beats moving 48 MB here
    (spill,) = scheduler(view(B, available=0.0)).request_lease(quick)
    assert isinstance(spill, Spill) and spill.node_id == B


def test_locality_is_the_node_with_most_shared_memory_argument_bytes_above_a_floor():
    small = ["s", 0, LOCALITY_MIN_BYTES - 1, B, "b:1"]
    assert argument_locality([small, ["i", [0, b"", []]]]) is None
    resolved = [["s", 0, 3 * MB, B, "b:1"], ["s", 0, 2 * MB, HERE, "a:1"],
                ["s", 0, 2 * MB, HERE, "a:1"]]
    assert argument_locality(resolved) == [HERE, 4 * MB]
