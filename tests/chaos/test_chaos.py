"""The chaos suite: a few seeds of a short run in CI; longer runs by hand
(``python -m tests.chaos --minutes 10``)."""

from __future__ import annotations

import pytest
from chaos_plan import ChaosPlan
from chaos_run import run_chaos

pytestmark = pytest.mark.integration

SEEDS = (1, 2, 3)
RUN_S = 15.0


@pytest.mark.parametrize("seed", SEEDS)
def test_every_result_is_right_under_seeded_faults(seed, tmp_path):
    report = run_chaos(seed, RUN_S, tmp_path)
    print(report.summary())
    assert report.rounds >= 1, report.summary()
    assert sum(report.faults.values()) >= 3, report.summary()  # the run did meet faults
    assert not report.wrong, report.summary()


def test_a_seed_names_one_sequence_of_faults():
    cluster = {"a": [11, 12], "b": [21], "c": []}

    def faults(seed: int) -> list:
        plan = ChaosPlan(seed)
        return [plan.next_fault(cluster) for _ in range(20)]

    assert faults(7) == faults(7)
    assert faults(8) != faults(7)


def test_the_plan_keeps_enough_nodes_and_never_too_many():
    plan = ChaosPlan(3, min_nodes=2, max_nodes=4)
    for nodes in ({"a": [1], "b": [2]}, {"a": [], "b": []}):
        for _ in range(200):
            assert plan.next_fault(nodes).kind != "kill-node"
    full = {"a": [1], "b": [2], "c": [3], "d": [4]}
    for _ in range(200):
        assert plan.next_fault(full).kind != "add-node"
