"""Placement groups on a real cluster of several nodes (``cluster_utils.Cluster``): each
strategy places its bundles as it says, an infeasible group waits for a node that fits,
tasks and actors run in bundles on their reservation, removal gives everything back and
kills what used it, and nothing is left running.
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
from cellfleet.util import (
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from cellfleet.util.placement_group import PlacementGroup
from cellfleet.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from cellfleet.util.state import list_tasks

pytestmark = pytest.mark.integration


@ray.remote(num_cpus=0.25)
def node_of() -> str:
    return ray.get_runtime_context().get_node_id()


@ray.remote(num_cpus=0.25)
def current_group() -> str | None:
    group = get_current_placement_group()
    return None if group is None else group.id.hex()


@ray.remote(num_cpus=0.25, max_retries=0)
def hold(gate: str) -> str:
    touch(gate + "." + str(os.getpid()))
    wait_for_file(gate, timeout=60)
    return "done"


@ray.remote(num_cpus=1)
class Where:
    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def group(self) -> str | None:
        group = get_current_placement_group()
        return None if group is None else group.id.hex()

    def pid(self) -> int:
        return os.getpid()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head and two nodes of 1 CPU each; the second node has resource "a"."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1, resources={"a": 1})
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def in_bundle(pg: PlacementGroup, index: int = -1, **kw) -> dict:
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, index, **kw)}


def nodes_of(pg: PlacementGroup) -> dict[int, str]:
    return {int(i): n for i, n in placement_group_table(pg)["bundles_to_node_id"].items()}


def dead(actor: ray.actor.ActorHandle) -> bool:
    try:
        ray.get(actor.node.remote(), timeout=30)
    except exceptions.RayActorError:
        return True
    return False


def all_free(cluster: Cluster) -> bool:
    """Every CPU of the cluster is free again and no bundle resource is left anywhere."""
    free = ray.available_resources()
    return free.get("CPU") == ray.cluster_resources()["CPU"] and not any(
        "_group_" in k for k in ray.cluster_resources())


@pytest.mark.parametrize("strategy, count", [
    ("PACK", 1), ("STRICT_PACK", 1), ("SPREAD", 3), ("STRICT_SPREAD", 3)])
def test_each_strategy_places_bundles_and_tasks_run_where_their_bundle_is(
        cluster: Cluster, strategy: str, count: int) -> None:
    pg = placement_group([{"CPU": 0.25}] * 3, strategy=strategy)
    assert ray.get(pg.ready(), timeout=30) == pg
    assert pg.wait(5)
    where = nodes_of(pg)
    assert len(set(where.values())) == count
    ran = ray.get([node_of.options(**in_bundle(pg, i)).remote() for i in range(3)], timeout=30)
    assert ran == [where[i] for i in range(3)]
    assert set(ray.get(current_group.options(**in_bundle(pg)).remote(), timeout=30) for _ in
               range(2)) == {pg.id.hex()}
    reason = f"PlacementGroup({pg.id.hex()[:8]}, bundle "  # in each task's record
    wait_until(lambda: any(t.get("placement_reason", "").startswith(reason)
                           for t in list_tasks(limit=10_000)), message="the placement reasons")
    record = placement_group_table(pg)
    assert record["state"] == "CREATED" and record["strategy"] == strategy
    assert record["bundles"] == {0: {"CPU": 0.25}, 1: {"CPU": 0.25}, 2: {"CPU": 0.25}}
    assert pg.id.hex() in placement_group_table()
    remove_placement_group(pg)
    assert placement_group_table(pg)["state"] == "REMOVED"
    wait_until(lambda: all_free(cluster), message="the group's resources to be returned")


def test_the_reservation_is_exact_and_a_bundle_only_takes_what_fits_it(cluster: Cluster) -> None:
    with_a = cluster.worker_nodes[1].node_id
    pg = placement_group([{"CPU": 1, "a": 1}], strategy="STRICT_PACK", name="exact")
    ray.get(pg.ready(), timeout=30)
    assert nodes_of(pg) == {0: with_a}
    assert get_placement_group("exact") == pg
    wait_until(lambda: ray.available_resources().get("CPU") == 2, message="1 CPU reserved")
    actor = Where.options(**in_bundle(pg, 0)).remote()
    assert ray.get(actor.node.remote(), timeout=30) == with_a
    assert ray.get(actor.group.remote(), timeout=30) == pg.id.hex()
    actor_pid = ray.get(actor.pid.remote(), timeout=30)
    # The actor runs on the bundle's CPU: the cluster's free CPUs stay as they were.
    assert ray.available_resources().get("CPU") == 2
    too_big = node_of.options(num_cpus=2, **in_bundle(pg, 0)).remote()
    ready, _ = ray.wait([too_big], timeout=0.5)
    assert ready == []
    remove_placement_group(pg)
    # Removal kills the actor and refuses the task that waited for the bundle.
    wait_until(lambda: dead(actor), timeout=30, message="the actor to be killed")
    wait_until(lambda: not os.path.exists(f"/proc/{actor_pid}"), message="its process to end")
    with pytest.raises(exceptions.TaskUnschedulableError, match="was removed"):
        ray.get(too_big, timeout=30)
    with pytest.raises(ValueError, match="Failed to look up"):
        get_placement_group("exact")
    wait_until(lambda: all_free(cluster), message="the group's resources to be returned")


def test_removal_kills_running_tasks_and_refuses_later_ones(cluster: Cluster,
                                                            tmp_path) -> None:
    pg = placement_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="SPREAD")
    ray.get(pg.ready(), timeout=30)
    gate = str(tmp_path / "gate")
    running = [hold.options(**in_bundle(pg, i)).remote(gate) for i in range(2)]
    wait_until(lambda: len(list(tmp_path.glob("gate.*"))) == 2, timeout=30,
               message="both tasks to start")
    pids = {int(p.name.split(".")[1]) for p in tmp_path.glob("gate.*")}
    remove_placement_group(pg)
    for ref in running:
        with pytest.raises(exceptions.WorkerCrashedError):
            ray.get(ref, timeout=30)
    wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids),
               message="the tasks' workers to be killed")
    with pytest.raises(exceptions.TaskUnschedulableError, match="was removed"):
        ray.get(node_of.options(**in_bundle(pg)).remote(), timeout=30)
    wait_until(lambda: all_free(cluster), message="the group's resources to be returned")


def test_child_tasks_are_captured_into_the_group_and_a_blocked_parent_lends_its_cpu(
        cluster: Cluster) -> None:
    @ray.remote(num_cpus=1)
    def parent() -> tuple[str | None, str]:
        return ray.get(current_group.options(num_cpus=1).remote()), \
            ray.get_runtime_context().get_node_id()

    pg = placement_group([{"CPU": 1}], strategy="PACK")
    ray.get(pg.ready(), timeout=30)
    group, _ = ray.get(parent.options(**in_bundle(
        pg, placement_group_capture_child_tasks=True)).remote(), timeout=30)
    assert group == pg.id.hex()
    remove_placement_group(pg)
    wait_until(lambda: all_free(cluster), message="the group's resources to be returned")


def test_an_infeasible_strict_spread_waits_and_is_placed_when_a_node_joins(
        cluster: Cluster) -> None:
    pg = placement_group([{"CPU": 0.5}] * 4, strategy="STRICT_SPREAD")
    ready = pg.ready()
    assert not pg.wait(0.5)
    record = placement_group_table(pg)
    assert record["state"] == "PENDING" and "infeasible" in record["stats"]["pending_reason"]
    assert ray.wait([ready], timeout=0.5)[0] == []
    node = cluster.add_node(num_cpus=1)
    assert ray.get(ready, timeout=30) == pg
    where = nodes_of(pg)
    assert len(set(where.values())) == 4 and node.node_id in where.values()
    # A node holding a bundle dies: three nodes are too few for the group, so it waits.
    cluster.remove_node(node)
    wait_until(lambda: placement_group_table(pg)["state"] == "RESCHEDULING", timeout=15,
               message="the group to notice its node died")
    remove_placement_group(pg)
    wait_until(lambda: all_free(cluster), message="the group's resources to be returned")


def test_bundles_of_a_node_that_dies_are_placed_again_elsewhere(cluster: Cluster) -> None:
    node = cluster.add_node(num_cpus=1)
    pg = placement_group([{"CPU": 0.25}] * 4, strategy="SPREAD")
    ray.get(pg.ready(), timeout=30)
    before = nodes_of(pg)
    (moved,) = [i for i, n in before.items() if n == node.node_id]
    cluster.remove_node(node)
    wait_until(lambda: placement_group_table(pg)["state"] == "CREATED"
               and nodes_of(pg).get(moved, node.node_id) != node.node_id, timeout=15,
               message="the lost bundle to be placed again")
    after = nodes_of(pg)
    assert all(after[i] == before[i] for i in before if i != moved)
    assert ray.get(node_of.options(**in_bundle(pg, moved)).remote(), timeout=30) == after[moved]
    remove_placement_group(pg)
    wait_until(lambda: all_free(cluster), message="the group's resources to be returned")


def test_bad_input_says_what_to_do(cluster: Cluster) -> None:
    with pytest.raises(ValueError, match="Invalid placement group strategy"):
        placement_group([{"CPU": 1}], strategy="EVERYWHERE")
    with pytest.raises(ValueError, match="non-empty list"):
        placement_group([])
    pg = placement_group([{"CPU": 0.25}])
    with pytest.raises(ValueError, match="out of range"):
        node_of.options(**in_bundle(pg, 3)).remote()
    with pytest.raises(ValueError, match="cannot be set at the same time"):
        node_of.options(placement_group=pg, scheduling_strategy="SPREAD").remote()
    # Ray's legacy options still place work in the group.
    ray.get(pg.ready(), timeout=30)
    assert ray.get(current_group.options(placement_group=pg).remote(), timeout=30) == \
        pg.id.hex()
    remove_placement_group(pg)


def test_a_job_s_groups_go_with_it_and_nothing_is_left_running(cluster: Cluster) -> None:
    pg = placement_group([{"CPU": 0.5}])
    ray.get(pg.ready(), timeout=30)
    ray.shutdown()  # the job ends: its (not detached) group is removed
    ray.init(address=cluster.address)
    wait_until(lambda: placement_group_table(pg).get("state") == "REMOVED",
               message="the finished job's group to be removed")
    wait_until(lambda: all_free(cluster), message="the group's resources to be returned")
    assert all(g["state"] not in ("CREATED", "PENDING") for g in
               placement_group_table().values())
