"""Bottom-up scheduling across nodes as a state machine: requests in, where they go out."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cellfleet.gcs.resource_view import ResourceView
from cellfleet.raylet.cluster_scheduler import (
    SPILL_SETTLE_S,
    ClusterScheduler,
    Infeasible,
    Spill,
    node_name,
)
from cellfleet.raylet.scheduler import Grant, LeaseRequest, LocalScheduler, Reject

HERE = b"\x01" * 16
B = b"\x02" * 16
C = b"\x03" * 16


def row(node_id: bytes, total: dict, available: dict | None = None, queued: int = 0) -> dict:
    return {"node_id": node_id, "address": f"127.0.0.{node_id[0]}:1", "total": total,
            "available": dict(total if available is None else available), "queued": queued,
            "alive": True}


def cluster(here: dict | None = None, *rows: dict, workers: int = 4) -> ClusterScheduler:
    local = LocalScheduler(here or {"CPU": 1.0})
    for i in range(workers):
        local.worker_registered(bytes([i]) * 4)
    scheduler = ClusterScheduler(HERE, local)
    scheduler.update_nodes(list(rows))
    return scheduler


def req(i: int, owner: object = "o", strategy: list | None = None, **resources: float,
        ) -> LeaseRequest:
    return LeaseRequest(i, resources or {"CPU": 1.0}, owner, strategy=strategy)


def test_runs_here_when_it_fits_here_now() -> None:
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 1.0}))
    (grant,) = s.request_lease(req(1))
    assert isinstance(grant, Grant) and grant.request.reason == "local"


def test_a_busy_node_spills_back_to_a_node_with_free_resources() -> None:
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 1.0}))
    s.request_lease(req(1))
    (spill,) = s.request_lease(req(2))
    assert isinstance(spill, Spill) and spill.node_id == B and spill.address == "127.0.0.2:1"
    assert f"spilled back from {node_name(HERE)}: it had no free CPU" in spill.reason


def test_a_request_for_a_resource_goes_to_the_node_that_has_it() -> None:
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 1.0}), row(C, {"CPU": 1.0, "a": 2.0}))
    (spill,) = s.request_lease(req(1, CPU=1.0, a=1.0))
    assert isinstance(spill, Spill) and spill.node_id == C and "it has no a" in spill.reason


def test_spills_spread_over_free_nodes_until_the_next_broadcast() -> None:
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 1.0}), row(C, {"CPU": 1.0}))
    s.request_lease(req(1))
    targets = [s.request_lease(req(i))[0].node_id for i in (2, 3)]
    assert sorted(targets) == [B, C]
    # Nobody has it free now: it waits here, where it fits once the lease returns.
    assert s.request_lease(req(4)) == [] and len(s.local.queue) == 1
    assert s.local.queue[0].reason.startswith("local (queued")


def test_a_queued_request_moves_on_when_a_node_frees_up() -> None:
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 1.0}, {"CPU": 0.0}))
    s.request_lease(req(1))
    assert s.request_lease(req(2)) == [] and len(s.local.queue) == 1
    (spill, *_) = s.update_nodes([row(B, {"CPU": 1.0})])
    assert isinstance(spill, Spill) and spill.request.request_id == 2 and spill.node_id == B
    assert not s.local.queue and "it had no free CPU (queue 1)" in spill.reason


def test_spills_count_until_the_next_tick_then_queued_requests_move_on() -> None:
    # B's lease comes and goes between two of its reports: no broadcast says B is free.
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 1.0}))
    s.request_lease(req(1))
    assert s.request_lease(req(2))[0].node_id == B
    assert s.request_lease(req(3)) == []  # B looks taken: queued here
    (spill, *_) = s.tick()
    assert isinstance(spill, Spill) and spill.request.request_id == 3 and spill.node_id == B


def test_with_no_free_node_the_lowest_estimated_wait_wins() -> None:
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 2.0}, {"CPU": 0.0}, queued=1))
    s.request_lease(req(1))
    assert s.request_lease(req(2)) == []  # here: 1 ahead on 1 CPU; B: 2 ahead on 2 CPUs
    request = req(3)
    request.task_s = 0.05
    (spill,) = s.request_lease(request)  # here 2 ahead now: B waits less
    assert spill.node_id == B
    assert spill.reason.endswith("it had no free CPU (queue 1, est. wait 100 ms)")


def test_no_free_node_but_others_have_it_goes_to_the_shortest_queue() -> None:
    s = cluster({"CPU": 1.0}, row(B, {"a": 1.0}, {"a": 0.0}, queued=5),
                row(C, {"a": 1.0}, {"a": 0.0}, queued=1))
    (spill,) = s.request_lease(req(1, a=1.0))
    assert spill.node_id == C


def test_infeasible_is_answered_then_waits_for_a_node_that_fits() -> None:
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 1.0}))
    request = req(1, GPU=1.0)
    (answer,) = s.request_lease(request)
    assert isinstance(answer, Infeasible) and "GPU" in answer.reason
    assert "2 node(s)" in answer.reason
    request.wait_infeasible = True
    assert s.request_lease(request) == [] and s.parked == [request]
    assert s.update_nodes([row(C, {"CPU": 2.0})]) == []  # still nobody with a GPU
    (spill,) = s.update_nodes([row(C, {"CPU": 2.0, "GPU": 1.0})])
    assert isinstance(spill, Spill) and spill.node_id == C and not s.parked


def test_infeasible_when_no_single_node_has_everything() -> None:
    s = cluster({"CPU": 1.0, "a": 1.0}, row(B, {"CPU": 1.0, "b": 1.0}))
    (answer,) = s.request_lease(req(1, a=1.0, b=1.0))
    assert isinstance(answer, Infeasible) and "no single node has all of them" in answer.reason


def test_a_parked_request_that_now_fits_here_is_queued_here() -> None:
    s = cluster({"CPU": 1.0})
    request = req(1, CPU=4.0)
    request.wait_infeasible = True
    assert s.request_lease(request) == []
    assert s.cancel_requests("o")[0] == [request] and not s.parked


def spilled(i: int, reason: str = "spilled back from x: it had no free CPU", **resources: float,
            ) -> LeaseRequest:
    request = req(i, **resources)
    request.spilled, request.reason = True, reason
    return request


def test_a_spilled_request_that_can_start_here_runs_here() -> None:
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 4.0}))
    (grant,) = s.request_lease(spilled(1))
    assert isinstance(grant, Grant) and grant.request.reason.startswith("spilled back from x")


def test_a_spilled_request_that_lands_on_a_busy_node_moves_on_to_a_free_one() -> None:
    # The sender saw this node free (its view was stale): this node knows better, and its
    # view shows B free.
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 1.0}))
    s.request_lease(req(1))
    (spill,) = s.request_lease(spilled(2))
    assert isinstance(spill, Spill) and spill.node_id == B and not s.local.queue
    assert spill.reason == f"spilled on from {node_name(HERE)}: it had no free CPU (queue 0)"


def test_a_spilled_request_with_no_free_node_is_queued_then_moves_on_once_settled() -> None:
    clock = [0.0]
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 1.0}, {"CPU": 0.0}, queued=1))
    s.local.clock = lambda: clock[0]
    s.request_lease(req(1))
    assert s.request_lease(spilled(2)) == [] and len(s.local.queue) == 1
    # B drains at once, but the request stays until it has settled here.
    assert s.update_nodes([row(B, {"CPU": 1.0})]) == [] and len(s.local.queue) == 1
    clock[0] = SPILL_SETTLE_S
    (spill, *_) = s.tick()
    assert isinstance(spill, Spill) and spill.node_id == B and not s.local.queue
    assert spill.reason.startswith(f"spilled on from {node_name(HERE)}")


def test_a_request_moved_on_once_is_queued_where_it_lands_when_busy() -> None:
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 1.0}))
    s.request_lease(req(1))
    assert s.request_lease(spilled(2, reason="spilled on from y: it had no free CPU")) == []
    assert len(s.local.queue) == 1


def test_a_request_spilled_here_for_its_arguments_stays_here() -> None:
    clock = [0.0]
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 4.0}))
    s.local.clock = lambda: clock[0]
    s.request_lease(req(1))
    request = spilled(2, reason="locality: here holds 8 MB of the arguments")
    request.locality = [HERE, 8_000_000]
    assert s.request_lease(request) == []
    clock[0] = 10 * SPILL_SETTLE_S
    assert s.tick() == [] and list(s.local.queue) == [request]


def test_affinity_and_placement_group_requests_spilled_here_stay_here() -> None:
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 4.0}))
    s.request_lease(req(1))
    pinned = (["NODE_AFFINITY", HERE, False], ["PLACEMENT_GROUP", b"g" * 16, -1])
    for i, strategy in enumerate(pinned, start=2):
        request = spilled(i)
        request.strategy = strategy
        assert s.request_lease(request) == []
    assert len(s.local.queue) == 2 and s.tick() == []


def test_a_spread_request_spilled_to_a_busy_node_moves_on_to_a_free_one() -> None:
    # The sender's SPREAD picked this node from a stale view; here the owner's own lease
    # holds the CPU, and B is free: waiting here could outlast every task of the burst.
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 1.0}))
    s.request_lease(req(1))
    request = spilled(2, reason="SPREAD")
    request.strategy = ["SPREAD"]
    (spill,) = s.request_lease(request)
    assert isinstance(spill, Spill) and spill.node_id == B and not s.local.queue
    assert spill.reason.startswith(f"spilled on from {node_name(HERE)}")


def test_a_queued_spread_request_moves_on_when_a_node_frees_up() -> None:
    clock = [0.0]
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 1.0}, {"CPU": 0.0}))
    s.local.clock = lambda: clock[0]
    s.request_lease(req(1))
    assert s.request_lease(req(2, strategy=["SPREAD"])) == [] and len(s.local.queue) == 1
    (spill, *_) = s.update_nodes([row(B, {"CPU": 1.0})])
    assert isinstance(spill, Spill) and spill.node_id == B and not s.local.queue


def test_spread_goes_round_robin_over_the_nodes() -> None:
    s = cluster({"CPU": 4.0}, row(B, {"CPU": 4.0}), row(C, {"CPU": 4.0}))
    placed = []
    for i in range(6):
        (action,) = s.request_lease(req(i, strategy=["SPREAD"]))
        placed.append(HERE if isinstance(action, Grant) else action.node_id)
        assert (action.reason if isinstance(action, Spill) else action.request.reason) == \
            "SPREAD"
    assert placed == [HERE, B, C, HERE, B, C]


def test_spread_skips_nodes_without_free_resources() -> None:
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 1.0}, {"CPU": 0.0}), row(C, {"CPU": 1.0}))
    s.request_lease(req(1))  # this node is full now
    (spill,) = s.request_lease(req(2, strategy=["SPREAD"]))
    assert spill.node_id == C


def test_hard_affinity_goes_to_its_node_or_fails() -> None:
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 1.0}))
    (spill,) = s.request_lease(req(1, strategy=["NODE_AFFINITY", B, False]))
    assert isinstance(spill, Spill) and spill.node_id == B and spill.reason == \
        "NodeAffinity(hard)"
    (grant,) = s.request_lease(req(2, strategy=["NODE_AFFINITY", HERE, False]))
    assert isinstance(grant, Grant) and grant.request.reason == "NodeAffinity(hard)"
    (reject,) = s.request_lease(req(3, strategy=["NODE_AFFINITY", C, False]))
    assert isinstance(reject, Reject) and "dead or not part of this cluster" in reject.reason
    (reject,) = s.request_lease(req(4, strategy=["NODE_AFFINITY", B, False], GPU=1.0))
    assert isinstance(reject, Reject) and "has no GPU" in reject.reason


def test_soft_affinity_falls_back_to_default() -> None:
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 1.0}))
    (grant,) = s.request_lease(req(1, strategy=["NODE_AFFINITY", C, True]))
    assert isinstance(grant, Grant)
    assert grant.request.reason.startswith("NodeAffinity(soft): node 03030303 is dead")
    (spill,) = s.request_lease(req(2, strategy=["NODE_AFFINITY", B, True]))
    assert spill.node_id == B


def test_dead_nodes_leave_the_view() -> None:
    s = cluster({"CPU": 1.0}, row(B, {"CPU": 1.0}))
    s.update_nodes([{"node_id": B, "alive": False}])
    assert not s.nodes
    s.update_nodes([row(C, {"CPU": 1.0})], replace=True)
    assert list(s.nodes) == [C]


def test_malformed_gpu_amount_is_rejected_everywhere() -> None:
    s = cluster({"CPU": 1.0}, row(B, {"GPU": 4.0}))
    (reject,) = s.request_lease(req(1, GPU=1.5))
    assert isinstance(reject, Reject) and "whole number" in reject.reason


# -- the GCS's view ---------------------------------------------------------------------------


def test_resource_view_sends_only_what_changed() -> None:
    view = ResourceView()
    view.node_added(B, "127.0.0.2:1", {"CPU": 2.0})
    assert [r["node_id"] for r in view.changes()] == [B] and not view.pending()
    assert not view.report(B, {"CPU": 2.0}, {"queued": 0})
    assert view.report(B, {"CPU": 1.0}, {"queued": 3})
    (changed,) = view.changes()
    assert changed["available"] == {"CPU": 1.0} and changed["queued"] == 3
    assert view.node_removed(B) and not view.node_removed(B)
    assert view.changes() == [{"node_id": B, "alive": False}] and view.snapshot() == []
    assert not view.report(B, {"CPU": 2.0}, {})  # a dead node's late report changes nothing


# -- properties -------------------------------------------------------------------------------

shapes = st.fixed_dictionaries({"CPU": st.sampled_from([0.0, 1.0, 2.0])},
                               optional={"a": st.sampled_from([1.0, 2.0]),
                                         "GPU": st.sampled_from([1.0, 2.0])})
strategies = st.sampled_from([None, ["SPREAD"], ["NODE_AFFINITY", B, True],
                              ["NODE_AFFINITY", C, False], ["NODE_AFFINITY", HERE, True]])
events = st.lists(st.one_of(
    st.tuples(st.just("request"), shapes.filter(any), strategies, st.booleans()),
    st.tuples(st.just("node"), st.sampled_from([B, C]), shapes, st.booleans()),
    st.tuples(st.just("return"), st.integers(0, 20)),
    st.tuples(st.just("tick")),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(here=shapes, events=events)
def test_every_request_gets_one_answer_that_fits_the_view(here: dict, events: list) -> None:
    s = cluster(here, workers=8)
    answered: dict[int, object] = {}
    waiting: set[int] = set()  # queued here or parked
    n = 0

    def take(actions: list) -> None:
        for action in actions:
            if isinstance(action, (Grant, Spill, Infeasible, Reject)):
                request_id = action.request.request_id
                assert request_id not in answered, "answered twice"
                answered[request_id] = action
                waiting.discard(request_id)
            if isinstance(action, Spill):
                node = s.nodes[action.node_id]
                assert all(node.total.get(k, 0.0) >= v for k, v in action.request.resources.items())
                request = action.request
                assert not (request.spilled and request.strategy
                            and request.strategy[0] != "SPREAD"
                            and not s.local.missing(request.resources)), \
                    "a spilled affinity request that fits here moved on"

    for event in events:
        if event[0] == "request":
            _, resources, strategy, spilled = event
            n += 1
            request = LeaseRequest(n, dict(resources), "o", strategy=strategy, spilled=spilled,
                                   wait_infeasible=True)
            waiting.add(n)
            take(s.request_lease(request))
        elif event[0] == "node":
            _, node_id, total, alive = event
            take(s.update_nodes([row(node_id, total) if alive
                                 else {"node_id": node_id, "alive": False}]))
        elif event[0] == "tick":
            take(s.tick())
        else:
            leases = sorted(s.local.leases)
            if leases:
                take(s.local.return_lease(leases[event[1] % len(leases)]))
        for request in s.local.queue:
            assert not s.local.missing(request.resources), "queued where it can never run"
        for request in s.parked:
            assert request.request_id in waiting
    assert waiting == {r.request_id for r in s.local.queue} | {r.request_id for r in s.parked}


NODES = (HERE, B, C)
cluster_events = st.lists(st.one_of(
    st.tuples(st.just("request"), st.sampled_from(NODES)),
    st.tuples(st.just("return"), st.sampled_from(NODES), st.integers(0, 9)),
    st.tuples(st.just("true view"), st.sampled_from(NODES)),
    st.tuples(st.just("stale view"), st.sampled_from(NODES), st.sampled_from(NODES),
              st.sampled_from([0.0, 1.0, 2.0]), st.integers(0, 3)),
    st.tuples(st.just("time"), st.sampled_from([0.01, 0.05, SPILL_SETTLE_S])),
    st.tuples(st.just("tick"), st.sampled_from(NODES)),
), max_size=60)


@settings(max_examples=200, deadline=None)
@given(cpus=st.tuples(*[st.sampled_from([1.0, 2.0])] * 3), events=cluster_events)
def test_spilled_requests_hop_a_bounded_number_of_times_and_end_where_cpus_are_free(
        cpus: tuple, events: list) -> None:
    """Three nodes whose views of each other are stale or wrong in any way: a request hops at
    most twice, then once per ``SPILL_SETTLE_S``; once the views are true again and have
    settled, no request waits for a CPU on one node while another has one free."""
    clock = [0.0]
    nodes: dict[bytes, ClusterScheduler] = {}
    for node_id, n in zip(NODES, cpus):
        local = LocalScheduler({"CPU": n}, clock=lambda: clock[0])
        for i in range(4):
            local.worker_registered(node_id[:1] + bytes([i]) * 3)
        nodes[node_id] = ClusterScheduler(node_id, local)
    hops: dict[int, int] = {}
    born: dict[int, float] = {}

    def true_row(node_id: bytes) -> dict:
        local = nodes[node_id].local
        return row(node_id, local.total, local.available, len(local.queue))

    def carry(node_id: bytes, actions: list) -> None:
        for action in actions:
            if isinstance(action, Spill):  # the owner follows it at once
                request = action.request
                hops[request.request_id] += 1
                assert hops[request.request_id] <= 2 + (clock[0] - born[request.request_id]) \
                    / SPILL_SETTLE_S + 1e-9, "a request hopped more often than settling allows"
                request.spilled, request.reason = True, action.reason
                carry(action.node_id, nodes[action.node_id].request_lease(request))
            else:
                assert isinstance(action, Grant), action

    for node_id in NODES:
        nodes[node_id].update_nodes([true_row(other) for other in NODES])
    n = 0
    for event in events:
        kind, node_id, *rest = event if event[0] != "time" else (event[0], HERE, event[1])
        s = nodes[node_id]
        if kind == "request":
            n += 1
            hops[n], born[n] = 0, clock[0]
            carry(node_id, s.request_lease(LeaseRequest(n, {"CPU": 1.0}, "o")))
        elif kind == "return":
            leases = sorted(s.local.leases)
            if leases:
                carry(node_id, s.local.return_lease(leases[rest[0] % len(leases)]))
        elif kind == "true view":
            carry(node_id, s.update_nodes([true_row(other) for other in NODES]))
        elif kind == "stale view":
            other, free, queued = rest
            total = nodes[other].local.total
            carry(node_id, s.update_nodes([row(other, total, {"CPU": min(free, total["CPU"])},
                                               queued)]))
        elif kind == "time":
            clock[0] += rest[0]
        else:
            carry(node_id, s.tick())
    # The views become true and stay so: a few rounds of broadcasts and ticks, time passing.
    for _ in range(2 * len(hops) + 2):
        clock[0] += SPILL_SETTLE_S
        for node_id in NODES:
            carry(node_id, nodes[node_id].update_nodes([true_row(o) for o in NODES]))
            carry(node_id, nodes[node_id].tick())
    waiting = [node_id for node_id in NODES if nodes[node_id].local.waiting_for_resources()]
    free = [node_id for node_id in NODES if nodes[node_id].local.fits_now({"CPU": 1.0})]
    assert not (waiting and free), "a request waits for a CPU while another node has one free"
