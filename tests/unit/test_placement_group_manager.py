"""The GCS's placement group manager as a state machine: events in, actions out."""

from __future__ import annotations

import pytest

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

A, B, C, D = b"A" * 16, b"B" * 16, b"C" * 16, b"D" * 16
PG, PG2 = b"p" * 16, b"q" * 16


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def manager(*nodes: bytes, cpus: float = 2.0, clock: Clock | None = None,
            **kwargs) -> PlacementGroupManager:
    pgm = PlacementGroupManager(clock=clock or Clock(), **kwargs)
    for node in nodes:
        pgm.node_added(node, {"CPU": cpus})
    return pgm


def of(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def reserve(pgm: PlacementGroupManager, actions: list) -> list:
    """Every node prepares and commits what it is asked: the actions after the last step."""
    out: list = []
    for prepare in of(actions, Prepare):
        out += pgm.prepared(prepare.pg_id, prepare.attempt, prepare.node_id, True)
    done: list = [a for a in out if not isinstance(a, Commit)]  # one phase: done already
    for commit in of(out, Commit):
        done += pgm.committed(commit.pg_id, commit.attempt, commit.node_id, True)
    return done


def placement(prepares: list) -> dict[int, bytes]:
    return {index: p.node_id for p in prepares for index, _ in p.bundles}


def test_a_group_on_one_node_is_prepared_and_committed_in_one_step() -> None:
    pgm = manager(A)
    (prepare,) = pgm.create(PG, [{"CPU": 1}, {"CPU": 1}], "PACK")
    assert prepare.commit and prepare.node_id == A
    done = pgm.prepared(PG, 1, A, True)
    assert of(done, GroupSettled)[0].record["state"] == "CREATED"


def test_a_group_is_created_after_every_node_prepared_then_committed() -> None:
    pgm = manager(A, B)
    actions = pgm.create(PG, [{"CPU": 1}, {"CPU": 1}], "SPREAD")
    prepares = of(actions, Prepare)
    assert sorted(p.node_id for p in prepares) == [A, B] and not prepares[0].commit
    assert pgm.get(PG)["state"] == "PENDING"
    first = pgm.prepared(PG, 1, A, True)
    assert first == []  # B has not prepared yet: nothing is committed
    commits = pgm.prepared(PG, 1, B, True)
    assert sorted(c.node_id for c in of(commits, Commit)) == [A, B]
    assert pgm.committed(PG, 1, A, True) == []
    done = pgm.committed(PG, 1, B, True)
    assert sorted(a.node_id for a in of(done, BundlesChanged)) == [A, B]
    (settled,) = of(done, GroupSettled)
    assert settled.record["state"] == "CREATED"
    assert set(settled.record["bundles_to_node_id"].values()) == {A.hex(), B.hex()}
    assert pgm.node_bundle_resources(A)[f"CPU_group_{PG.hex()}"] == 1.0


@pytest.mark.parametrize("strategy, expect", [
    ("PACK", 1), ("STRICT_PACK", 1), ("SPREAD", 3), ("STRICT_SPREAD", 3)])
def test_strategies_use_as_few_or_as_many_nodes_as_they_say(strategy: str, expect: int) -> None:
    pgm = manager(A, B, C, cpus=4)
    prepares = of(pgm.create(PG, [{"CPU": 1}] * 3, strategy), Prepare)
    assert len(set(placement(prepares).values())) == expect


def test_pack_spills_to_more_nodes_when_one_is_not_enough_but_strict_pack_waits() -> None:
    pgm = manager(A, B, cpus=2)
    assert len(set(placement(of(pgm.create(PG, [{"CPU": 1}] * 3, "PACK"),
                                Prepare)).values())) == 2
    assert pgm.create(PG2, [{"CPU": 1}] * 3, "STRICT_PACK") == []
    assert "infeasible" in pgm.get(PG2)["stats"]["pending_reason"]


def test_infeasible_strict_spread_waits_and_is_placed_when_a_node_joins() -> None:
    pgm = manager(A, B, C)
    assert pgm.create(PG, [{"CPU": 1}] * 4, "STRICT_SPREAD") == []
    record = pgm.get(PG)
    assert record["state"] == "PENDING" and "infeasible" in record["stats"]["pending_reason"]
    actions = pgm.node_added(D, {"CPU": 2})
    assert len(set(placement(of(actions, Prepare)).values())) == 4
    assert of(reserve(pgm, actions), GroupSettled)[0].record["state"] == "CREATED"


def test_a_refused_prepare_returns_the_attempt_everywhere_and_retries_on_a_report() -> None:
    pgm = manager(A, B)
    actions = pgm.create(PG, [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD")
    assert pgm.prepared(PG, 1, A, True) == []
    aborted = pgm.prepared(PG, 1, B, False)
    assert sorted((r.node_id, r.attempt) for r in of(aborted, ReturnBundles)) == [(A, 1), (B, 1)]
    assert "no longer had" in pgm.get(PG)["stats"]["pending_reason"]
    # Late answers of the aborted attempt change nothing.
    assert pgm.committed(PG, 1, A, True) == [] and pgm.prepared(PG, 1, A, True) == []
    retry = pgm.node_report(B, {"CPU": 2})
    assert {p.attempt for p in of(retry, Prepare)} == {2}
    assert of(reserve(pgm, retry), GroupSettled)
    assert len(actions) == 2


def test_a_node_dying_mid_commit_aborts_and_places_the_group_on_the_others() -> None:
    pgm = manager(A, B, C, cpus=1)
    actions = pgm.create(PG, [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD")
    used = sorted(placement(of(actions, Prepare)).values())
    for node in used:
        pgm.prepared(PG, 1, node, True)
    pgm.committed(PG, 1, used[0], True)
    after = pgm.node_removed(used[1])
    assert (used[0], 1) in [(r.node_id, r.attempt) for r in of(after, ReturnBundles)]
    # What the aborted attempt took counts as free again once its node reports it.
    assert of(after, Prepare) == []
    retry = of(pgm.node_report(used[0], {"CPU": 1}), Prepare)
    assert retry and all(p.attempt == 2 for p in retry)
    assert used[1] not in placement(retry).values()


def test_a_created_group_whose_node_dies_is_rescheduled_keeping_its_other_bundles() -> None:
    pgm = manager(A, B, C, cpus=1)
    done = reserve(pgm, pgm.create(PG, [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD"))
    nodes = {int(i): bytes.fromhex(n) for i, n in
             of(done, GroupSettled)[0].record["bundles_to_node_id"].items()}
    actions = pgm.node_removed(nodes[1])
    assert pgm.get(PG)["state"] == "RESCHEDULING"
    (prepare,) = of(actions, Prepare)
    assert [index for index, _ in prepare.bundles] == [1] and prepare.node_id != nodes[0]
    done = reserve(pgm, actions)
    record = of(done, GroupSettled)[0].record
    assert record["state"] == "CREATED" and record["bundles_to_node_id"][0] == nodes[0].hex()


def test_a_node_that_registers_again_has_its_bundles_placed_again() -> None:
    pgm = manager(A, cpus=1)
    reserve(pgm, pgm.create(PG, [{"CPU": 1}], "PACK"))
    actions = pgm.node_added(A, {"CPU": 1})  # it gave them back when its connection closed
    assert pgm.get(PG)["state"] == "RESCHEDULING" and pgm.node_bundle_resources(A) == {}
    assert of(reserve(pgm, actions), GroupSettled)[0].record["state"] == "CREATED"


def test_removal_returns_everything_and_frees_the_name() -> None:
    pgm = manager(A, B)
    reserve(pgm, pgm.create(PG, [{"CPU": 1}, {"CPU": 1}], "SPREAD", name="x"))
    with pytest.raises(ValueError, match="named 'x' exists"):
        pgm.create(PG2, [{"CPU": 1}], "PACK", name="x")
    actions = pgm.remove(PG)
    assert sorted((r.node_id, r.attempt) for r in of(actions, ReturnBundles)) == [(A, -1),
                                                                                   (B, -1)]
    assert of(actions, GroupSettled)[0].record["state"] == "REMOVED"
    assert pgm.node_bundle_resources(A) == {} and pgm.named("x", "") is None
    assert pgm.remove(PG) == []  # twice: nothing more
    assert of(pgm.create(PG2, [{"CPU": 1}], "PACK", name="x"), Prepare)


def test_removing_a_group_mid_reservation_returns_the_attempt_and_ignores_late_answers() -> None:
    pgm = manager(A)
    pgm.create(PG, [{"CPU": 1}], "PACK")
    actions = pgm.remove(PG)
    assert [(r.node_id, r.attempt) for r in of(actions, ReturnBundles)] == [(A, -1)]
    assert pgm.prepared(PG, 1, A, True) == [] and pgm.committed(PG, 1, A, True) == []


def test_a_removed_group_frees_room_for_a_waiting_one_without_waiting_for_a_report() -> None:
    pgm = manager(A, cpus=1)
    reserve(pgm, pgm.create(PG, [{"CPU": 1}], "PACK"))
    pgm.node_report(A, {"CPU": 0})
    assert pgm.create(PG2, [{"CPU": 1}], "PACK") == []
    assert of(pgm.remove(PG), Prepare)[0].pg_id == PG2


def test_an_attempt_whose_answers_are_lost_times_out_and_tries_again() -> None:
    clock = Clock()
    pgm = manager(A, clock=clock)
    pgm.create(PG, [{"CPU": 1}], "PACK")
    assert pgm.tick() == []
    clock.now += ATTEMPT_TIMEOUT_S + 1
    actions = pgm.tick()
    assert [(r.node_id, r.attempt) for r in of(actions, ReturnBundles)] == [(A, 1)]
    assert [p.attempt for p in of(actions, Prepare)] == [2]


def test_a_finished_job_takes_its_groups_but_not_detached_ones() -> None:
    pgm = manager(A)
    reserve(pgm, pgm.create(PG, [{"CPU": 0.5}], "PACK", job_id=3))
    reserve(pgm, pgm.create(PG2, [{"CPU": 0.5}], "PACK", detached=True, job_id=3))
    pgm.job_finished(3)
    assert pgm.get(PG)["state"] == "REMOVED" and pgm.get(PG2)["state"] == "CREATED"


def test_tables_are_bounded() -> None:
    pgm = manager(A, cpus=100, max_groups=2, max_removed=1)
    pgm.create(b"1" * 16, [{"CPU": 1}], "PACK")
    pgm.create(b"2" * 16, [{"CPU": 1}], "PACK")
    with pytest.raises(ValueError, match="limit"):
        pgm.create(b"3" * 16, [{"CPU": 1}], "PACK")
    pgm.remove(b"1" * 16)
    pgm.remove(b"2" * 16)
    assert len(pgm.groups) == 1 and pgm.stats()["removed_forgotten"] == 1


@pytest.mark.parametrize("bundles, strategy, match", [
    ([], "PACK", "non-empty list"),
    ([{"CPU": 0}], "PACK", "asks for nothing"),
    ([{"CPU": -1}], "PACK", "non-negative"),
    ([{"CPU": 1}], "SPREAD_EVERYWHERE", "Invalid placement group strategy"),
])
def test_bad_input_says_what_to_pass(bundles: list, strategy: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        manager(A).create(PG, bundles, strategy)


def test_place_bundles_respects_fixed_bundles() -> None:
    free = {A: {"CPU": 4}, B: {"CPU": 4}}
    assert place_bundles([{"CPU": 1}] * 2, "STRICT_PACK", [1], {0: B}, free) == {1: B}
    assert place_bundles([{"CPU": 1}] * 2, "STRICT_SPREAD", [1], {0: B}, free) == {1: A}
    assert place_bundles([{"CPU": 1}] * 3, "STRICT_SPREAD", [1, 2], {0: B}, free) is None
