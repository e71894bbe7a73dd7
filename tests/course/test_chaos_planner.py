"""The decisions of ``%chaos`` (kernel/chaos.py), with no cluster: parsing, the victim a seed
picks in a snapshot, and every refusal."""

from __future__ import annotations

import pytest

from cellfleet.kernel.chaos import (
    MAX_SLOW_MS,
    ActorView,
    ChaosCommand,
    ChaosPlanner,
    ChaosRefused,
    ClusterSnapshot,
    NodeView,
    WorkerView,
    parse_chaos_line,
)

HEAD = NodeView("aa" * 16, "127.0.0.1", True, True, (100, 101))
N2 = NodeView("b2" * 16, "127.0.0.2", True, False, (200, 201, 202))
N3 = NodeView("c3" * 16, "127.0.0.3", True, False, (300, 301))
N4 = NodeView("d4" * 16, "127.0.0.10", True, False, (400,))
DEAD = NodeView("e5" * 16, "127.0.0.5", False, False, (500,))
FOREIGN = NodeView("f6" * 16, "127.0.0.6", True, False, ())  # joined from elsewhere


def snapshot(**changes: object) -> ClusterSnapshot:
    base = dict(
        address="127.0.0.1:6379", started_here=True, gcs_pid=99, storage="memory",
        nodes=(HEAD, N2, N3, N4, DEAD, FOREIGN),
        workers=(WorkerView(201, N2.node_id, "slow", "t1"),
                 WorkerView(301, N3.node_id, "fast", "t2"),
                 WorkerView(101, HEAD.node_id, "slow", "t3")),
        actors=(ActorView("ac" * 16, "counter", "Counter", "ALIVE", 202, N2.node_id, 2, 0),
                ActorView("ad" * 16, "", "Anon", "ALIVE", 777, N3.node_id, 0, 0),
                ActorView("ae" * 16, "gone", "Gone", "DEAD", 0, "", 0, 0)),
        own_pids=frozenset({99, 100, 101, 200, 201, 202, 300, 301, 400, 500}),
        objects_on={N2.node_id: 3},
    )
    base.update(changes)
    return ClusterSnapshot(**base)  # type: ignore[arg-type]


def plan(line: str, seed: int = 0, **changes: object):
    return ChaosPlanner().plan(parse_chaos_line(line), snapshot(**changes), seed)


# -- parsing -----------------------------------------------------------------------------

def test_lines_parse_into_commands() -> None:
    assert parse_chaos_line("kill-worker") == ChaosCommand("kill-worker")
    assert parse_chaos_line("kill-node 127.0.0.3 --seed 7") == ChaosCommand(
        "kill-node", "127.0.0.3", None, 7)
    assert parse_chaos_line("--seed 3 kill-node") == ChaosCommand("kill-node", seed=3)
    assert parse_chaos_line("slow-node 127.0.0.2 1500") == ChaosCommand(
        "slow-node", "127.0.0.2", 1500)
    assert parse_chaos_line("kill-actor counter") == ChaosCommand("kill-actor", "counter")


@pytest.mark.parametrize("line, says", [
    ("", "is not a fault"),
    ("explode", "'explode' is not a fault"),
    ("kill-node --seed", "--seed needs a whole number"),
    ("kill-node --seed x", "not 'x'"),
    ("kill-node --force", "unknown option --force"),
    ("kill-worker 3", "takes no argument"),
    ("kill-actor", "needs the actor's name"),
    ("slow-node 127.0.0.2", "needs a node and milliseconds"),
    ("slow-node 127.0.0.2 fast", "whole milliseconds"),
    (f"slow-node 127.0.0.2 {MAX_SLOW_MS + 1}", "suspected dead"),
    ("slow-node 127.0.0.2 0", f"1..{MAX_SLOW_MS}"),
    ("kill-node 'unclosed", "cannot parse"),
])
def test_bad_lines_say_what_to_do(line: str, says: str) -> None:
    with pytest.raises(ChaosRefused, match=says.replace(".", r"\.").replace("'", "'")):
        parse_chaos_line(line)


# -- victims ------------------------------------------------------------------------------

def test_the_same_seed_picks_the_same_victim_and_seeds_differ() -> None:
    for action in ("kill-node", "kill-worker"):
        victims = {seed: plan(action, seed).victim for seed in range(40)}
        assert all(plan(action, seed).victim == victims[seed] for seed in range(40))
        assert len(set(victims.values())) > 1, f"{action}: every seed picked the same victim"


def test_the_choice_does_not_depend_on_the_order_the_cluster_lists_things() -> None:
    s = snapshot()
    shuffled = snapshot(nodes=tuple(reversed(s.nodes)), workers=tuple(reversed(s.workers)))
    planner = ChaosPlanner()
    for seed in range(20):
        for line in ("kill-node", "kill-worker"):
            cmd = parse_chaos_line(line)
            assert planner.plan(cmd, s, seed) == planner.plan(cmd, shuffled, seed)


def test_kill_node_never_picks_the_head_a_dead_node_or_one_it_did_not_start() -> None:
    picked = {plan("kill-node", seed).node_id for seed in range(60)}
    assert picked == {N2.node_id, N3.node_id, N4.node_id}


def test_kill_node_kills_the_raylet_and_everything_under_it_and_says_what_is_lost() -> None:
    fault = plan("kill-node 127.0.0.2")
    assert fault.kill == (200, 201, 202)
    assert fault.victim == f"node 127.0.0.2 ({N2.node_id[:8]})"
    assert "2 processes under its raylet" in fault.lost
    assert "3 objects in its store" in fault.lost
    assert "running tasks slow" in fault.lost and "actors counter" in fault.lost


def test_a_node_is_named_by_address_or_id_prefix() -> None:
    assert plan("kill-node c3c3").node_id == N3.node_id
    assert plan("kill-node 127.0.0.10").node_id == N4.node_id


@pytest.mark.parametrize("line, says", [
    ("kill-node 127.0.0.1", "is the head"),
    ("kill-node 127.0.0.5", "no live node '127.0.0.5'"),
    ("kill-node 127.0.0.6", "not started by this kernel"),
    ("kill-node 127.0.0.9", "the live nodes are 127.0.0.1"),
    ("slow-node 127.0.0.1 100", "is the head"),
])
def test_nodes_it_refuses(line: str, says: str) -> None:
    with pytest.raises(ChaosRefused, match=says):
        plan(line)


def test_a_prefix_that_names_two_nodes_is_refused() -> None:
    twin = NodeView("b2" * 15 + "ff", "127.0.0.7", True, False, (700,))
    with pytest.raises(ChaosRefused, match="names 2 nodes"):
        plan("kill-node b2", nodes=(HEAD, N2, twin))


def test_kill_node_with_only_the_head_says_to_add_nodes() -> None:
    with pytest.raises(ChaosRefused, match="add_node"):
        plan("kill-node", nodes=(HEAD,))


def test_kill_worker_picks_a_worker_running_a_task_of_this_kernel() -> None:
    assert {plan("kill-worker", seed).kill for seed in range(40)} == {(101,), (201,), (301,)}
    fault = plan("kill-worker", 0, workers=(WorkerView(301, N3.node_id, "fast", "t2"),))
    assert fault.kill == (301,) and fault.worker_pid == 301
    assert fault.lost == "the task fast it was running"


def test_kill_worker_with_nothing_running_says_to_start_work() -> None:
    with pytest.raises(ChaosRefused, match="no worker runs a task now"):
        plan("kill-worker", workers=())
    foreign = (WorkerView(9999, N2.node_id, "theirs", "t9"),)
    with pytest.raises(ChaosRefused, match="no worker runs a task now"):
        plan("kill-worker", workers=foreign)


def test_kill_actor_by_name_or_id_prefix() -> None:
    fault = plan("kill-actor counter")
    assert fault.kill == (202,) and "Counter" in fault.victim
    assert "may restart 2 more times" in fault.lost
    assert plan("kill-actor acac").kill == (202,)


def test_kill_actor_refusals() -> None:
    with pytest.raises(ChaosRefused, match="no live actor 'gone'.*counter"):
        plan("kill-actor gone")
    with pytest.raises(ChaosRefused, match="did not start"):
        plan("kill-actor adad")  # its pid is not this kernel's
    with pytest.raises(ChaosRefused, match="names 2 actors"):
        plan("kill-actor a")


def test_an_actor_without_restarts_is_lost_for_good() -> None:
    anon = ActorView("ad" * 16, "", "Anon", "ALIVE", 300, N3.node_id, 0, 0)
    assert "for good" in plan("kill-actor adad", actors=(anon,)).lost


def test_restart_gcs_needs_redis_storage() -> None:
    with pytest.raises(ChaosRefused, match="in memory.*gcs_storage"):
        plan("restart-gcs")
    fault = plan("restart-gcs", storage="redis")
    assert fault.kill == (99,) and fault.node_id == HEAD.node_id


def test_slow_node_pauses_every_process_of_the_node() -> None:
    fault = plan("slow-node 127.0.0.3 250")
    assert fault.pause == (300, 301) and fault.pause_ms == 250 and fault.kill == ()


@pytest.mark.parametrize("line", ["kill-worker", "kill-node", "kill-node 127.0.0.2",
                                  "kill-actor counter", "restart-gcs", "slow-node 127.0.0.2 5"])
def test_nothing_is_touched_in_a_cluster_this_kernel_did_not_start(line: str) -> None:
    with pytest.raises(ChaosRefused, match="not started by this kernel"):
        plan(line, started_here=False, storage="redis")
