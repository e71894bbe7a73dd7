"""Placement groups' two-phase reservation between the GCS's manager and the raylets' ledgers.

The raylet side (``raylet.bundles.BundleLedger`` over the ``LocalScheduler``) is tested on its
own first; then a simulated cluster, whose message deliveries hypothesis chooses (any order
between nodes, FIFO on each connection as TCP gives; prepares, commits and their answers
lost; nodes dying mid-reservation, nodes joining; groups removed), checks that nothing is
ever over-reserved, that every group ends CREATED exactly where the manager says (or
REMOVED), and that no node keeps anything of a removed group or an aborted attempt.
"""

from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from cellfleet.gcs.placement_groups import (
    ATTEMPT_TIMEOUT_S,
    BundlesChanged,
    Commit,
    GroupSettled,
    PlacementGroupManager,
    Prepare,
    ReturnBundles,
    place_bundles,
)
from cellfleet.raylet.bundles import BundleLedger
from cellfleet.raylet.scheduler import Grant, LeaseRequest, LocalScheduler, Reject

PG = b"p" * 16
HEX = PG.hex()


def ledger(cpus: float = 2.0) -> BundleLedger:
    scheduler = LocalScheduler({"CPU": cpus})
    for i in range(4):
        scheduler.worker_registered(b"w%d" % i)
    return BundleLedger(scheduler)


def test_prepare_takes_all_or_nothing_and_commit_adds_the_bundle_resources() -> None:
    lg = ledger(2)
    assert not lg.prepare(PG, 1, [[0, {"CPU": 1}], [1, {"CPU": 2}]])
    assert lg.scheduler.available["CPU"] == 2 and lg.bundles == {}
    assert lg.prepare(PG, 1, [[0, {"CPU": 1}], [1, {"CPU": 1}]])
    assert lg.prepare(PG, 1, [[0, {"CPU": 1}]])  # repeated: nothing more is taken
    assert lg.scheduler.available["CPU"] == 0
    assert lg.commit(PG, 2, [0])[0] is False  # not prepared for that attempt
    ok, _ = lg.commit(PG, 1, [0, 1])
    assert ok and lg.scheduler.total[f"CPU_group_{HEX}"] == 2
    assert lg.scheduler.available[f"CPU_group_1_{HEX}"] == 1
    assert lg.commit(PG, 1, [0, 1])[0] and lg.scheduler.total[f"CPU_group_{HEX}"] == 2


def test_give_back_kills_the_leases_in_the_bundles_and_refuses_queued_requests() -> None:
    lg = ledger(2)
    lg.prepare(PG, 1, [[0, {"CPU": 1}]])
    lg.commit(PG, 1, [0])
    s = lg.scheduler
    inside = {f"CPU_group_0_{HEX}": 1.0, f"CPU_group_{HEX}": 1.0, f"bundle_group_{HEX}": 0.001}
    (grant,) = [a for a in s.request_lease(LeaseRequest(1, inside, "o")) if isinstance(a, Grant)]
    outside = [a for a in s.request_lease(LeaseRequest(2, {"CPU": 1}, "o"))
               if isinstance(a, Grant)]
    assert s.request_lease(LeaseRequest(3, inside, "o")) == []  # queued: the bundle is busy
    workers, actions = lg.give_back(PG, -1)
    assert workers == [grant.lease.worker_id]
    assert [a.request.request_id for a in actions if isinstance(a, Reject)] == [3]
    assert "was removed" in actions[0].reason
    assert s.available == {"CPU": 1.0} and s.total == {"CPU": 2.0} and lg.bundles == {}
    assert len(s.leases) == 1 and outside
    assert lg.give_back(PG, -1) == ([], [])  # twice: nothing more


def test_give_back_of_one_attempt_leaves_the_others() -> None:
    lg = ledger(2)
    lg.prepare(PG, 1, [[0, {"CPU": 1}]])
    lg.commit(PG, 1, [0])
    lg.prepare(PG, 2, [[1, {"CPU": 1}]])
    lg.give_back(PG, 2)
    assert [key[1] for key in lg.bundles] == [0] and lg.scheduler.available["CPU"] == 1


def test_a_blocked_task_in_a_bundle_gives_its_bundle_cpus_back() -> None:
    lg = ledger(1)
    lg.prepare(PG, 1, [[0, {"CPU": 1}]])
    lg.commit(PG, 1, [0])
    s = lg.scheduler
    wild = {f"CPU_group_{HEX}": 1.0, f"bundle_group_{HEX}": 0.001}
    (parent,) = [a for a in s.request_lease(LeaseRequest(1, wild, "o")) if isinstance(a, Grant)]
    assert s.request_lease(LeaseRequest(2, wild, "o")) == []
    granted = [a for a in s.worker_blocked(parent.lease.worker_id) if isinstance(a, Grant)]
    assert [g.request.request_id for g in granted] == [2]


# -- the protocol under hypothesis --------------------------------------------------------------

NODES = [bytes([65 + i]) * 16 for i in range(4)]
GROUPS = [bytes([112 + i]) * 16 for i in range(3)]
SHAPES = [([{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD"), ([{"CPU": 1}] * 2, "PACK"),
          ([{"CPU": 2}], "STRICT_PACK"), ([{"CPU": 1}] * 3, "SPREAD")]


class SimulatedCluster:
    """The manager and a ledger per node; requests and answers wait in per-node FIFOs."""

    def __init__(self, live: int) -> None:
        self.now = 0.0
        self.pgm = PlacementGroupManager(clock=lambda: self.now)
        self.ledgers: dict[bytes, BundleLedger] = {}
        self.to_node: dict[bytes, deque] = {}
        self.to_gcs: dict[bytes, deque] = {}
        self.pending = list(NODES[live:])
        for node in NODES[:live]:
            self.join(node)

    def join(self, node: bytes) -> None:
        self.ledgers[node] = BundleLedger(LocalScheduler({"CPU": 2.0}))
        self.to_node[node], self.to_gcs[node] = deque(), deque()
        self.apply(self.pgm.node_added(node, {"CPU": 2.0}))

    def apply(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, (Prepare, Commit, ReturnBundles)):
                if action.node_id in self.to_node:
                    self.to_node[action.node_id].append(action)
            else:
                assert isinstance(action, (BundlesChanged, GroupSettled))

    def deliver_to_node(self, node: bytes, lose: bool) -> None:
        action = self.to_node[node].popleft()
        if lose and not isinstance(action, ReturnBundles):
            return  # the message or its answer is lost
        lg = self.ledgers[node]
        if isinstance(action, Prepare):
            ok = lg.prepare(action.pg_id, action.attempt, action.bundles)
            if ok and action.commit:
                ok, _ = lg.commit(action.pg_id, action.attempt,
                                  [index for index, _ in action.bundles])
            self.to_gcs[node].append(("prepared", action.pg_id, action.attempt, ok))
        elif isinstance(action, Commit):
            ok, _ = lg.commit(action.pg_id, action.attempt, action.indices)
            self.to_gcs[node].append(("committed", action.pg_id, action.attempt, ok))
        else:
            lg.give_back(action.pg_id, action.attempt)

    def deliver_to_gcs(self, node: bytes) -> None:
        kind, pg_id, attempt, ok = self.to_gcs[node].popleft()
        self.apply(getattr(self.pgm, kind)(pg_id, attempt, node, ok))

    def kill(self, node: bytes) -> None:
        del self.ledgers[node], self.to_node[node], self.to_gcs[node]
        self.apply(self.pgm.node_removed(node))

    def report(self, node: bytes) -> None:
        self.apply(self.pgm.node_report(node, dict(self.ledgers[node].scheduler.available)))

    def step(self, choice: int, lose: bool) -> None:
        live = sorted(self.ledgers)
        busy = [("node", n) for n in live if self.to_node[n]]
        busy += [("gcs", n) for n in live if self.to_gcs[n]]
        if not busy:
            return
        where, node = busy[choice % len(busy)]
        if where == "node":
            self.deliver_to_node(node, lose)
        else:
            self.deliver_to_gcs(node)

    def settle(self) -> None:
        """Deliver everything without loss, with time passing for lost attempts."""
        for _ in range(200):
            while any(self.to_node[n] or self.to_gcs[n] for n in self.ledgers):
                for node in sorted(self.ledgers):
                    while self.to_node[node]:
                        self.deliver_to_node(node, False)
                    while self.to_gcs[node]:
                        self.deliver_to_gcs(node)
            for node in sorted(self.ledgers):
                self.report(node)  # nothing is in flight: the reports are exact
            if any(self.to_node[n] for n in self.ledgers):
                continue  # new attempts, made from exact figures
            if not any(g.trying for g in self.pgm.groups.values()):
                return
            self.now += ATTEMPT_TIMEOUT_S + 1
            self.apply(self.pgm.tick())
        raise AssertionError("the reservation did not settle")

    def check_never_over_reserved(self) -> None:
        for lg in self.ledgers.values():
            assert lg.scheduler.available["CPU"] >= -1e-9


events = st.lists(st.tuples(st.sampled_from(["step", "step", "step", "lose", "kill", "join",
                                             "create", "remove", "report"]),
                            st.integers(0, 50)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(live=st.integers(1, 4), script=events)
def test_reservations_stay_exact_under_reordering_loss_and_node_deaths(live: int,
                                                                       script: list) -> None:
    sim = SimulatedCluster(live)
    created: set[bytes] = set()
    removed: set[bytes] = set()
    for what, n in script:
        if what in ("step", "lose"):
            sim.step(n, what == "lose")
        elif what == "kill" and len(sim.ledgers) > 1:
            sim.kill(sorted(sim.ledgers)[n % len(sim.ledgers)])
        elif what == "join" and sim.pending:
            sim.join(sim.pending.pop(0))
        elif what == "create" and len(created) < len(GROUPS):
            pg_id = GROUPS[len(created)]
            bundles, strategy = SHAPES[n % len(SHAPES)]
            created.add(pg_id)
            sim.apply(sim.pgm.create(pg_id, bundles, strategy))
        elif what == "remove" and created - removed:
            pg_id = sorted(created - removed)[n % len(created - removed)]
            removed.add(pg_id)
            sim.apply(sim.pgm.remove(pg_id))
        elif what == "report" and sim.ledgers:
            sim.report(sorted(sim.ledgers)[n % len(sim.ledgers)])
        sim.check_never_over_reserved()
    sim.settle()
    sim.check_never_over_reserved()
    # Every node holds exactly the committed bundles the manager placed there.
    expected: dict[bytes, set] = {node: set() for node in sim.ledgers}
    for pg_id, group in sim.pgm.groups.items():
        if group.state == "CREATED":
            for index, node in enumerate(group.nodes):
                expected[node].add((pg_id, index))
        else:
            assert group.state in ("PENDING", "RESCHEDULING", "REMOVED")
    for node, lg in sim.ledgers.items():
        assert {key for key, b in lg.bundles.items() if b.committed} == expected[node]
        assert all(b.committed for b in lg.bundles.values()), "a prepare left behind"
        held = sum(sum(b.resources.values()) for b in lg.bundles.values())
        assert abs(lg.scheduler.available["CPU"] + held - 2.0) < 1e-9
    for pg_id in removed:
        assert sim.pgm.groups[pg_id].state == "REMOVED"
    # A group left pending really does not fit what is free.
    free = {node: dict(lg.scheduler.available) for node, lg in sim.ledgers.items()}
    for group in sim.pgm.groups.values():
        if group.state in ("PENDING", "RESCHEDULING"):
            todo = [i for i, n in enumerate(group.nodes) if n is None]
            fixed = {i: n for i, n in enumerate(group.nodes) if n is not None}
            assert place_bundles(group.bundles, group.strategy, todo, fixed, free) is None
