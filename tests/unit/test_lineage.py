"""The owner's lineage table: arguments kept while outputs live, re-runs and their limits."""

from __future__ import annotations

from cellfleet import exceptions
from cellfleet.core.lineage import LineageTable
from cellfleet.core.task_spec import TaskSpec


def spec(n: int, max_retries: int = 3, actor: bool = False) -> TaskSpec:
    return TaskSpec(bytes([n]) * 16, 1, b"f", "f", b"", [], 2, "owner", bytes(16), "",
                    {"CPU": 1}, max_retries, False, actor_id=b"a" if actor else b"")


def test_arguments_stay_pinned_until_the_last_stored_output_goes():
    table = LineageTable()
    task = spec(1)
    assert table.finished(task, [b"arg"], outputs=2) == []
    assert table.output_freed(task.task_id) == []
    assert table.output_freed(task.task_id) == [b"arg"] and len(table) == 0


def test_what_cannot_be_rebuilt_releases_its_arguments_at_once():
    table = LineageTable()
    assert table.finished(spec(1), [b"a"], outputs=0) == [b"a"]  # nothing stored to lose
    assert table.finished(spec(2, max_retries=0), [b"b"], outputs=1) == [b"b"]
    assert table.finished(spec(3, actor=True), [b"c"], outputs=1) == [b"c"]
    assert len(table) == 0


def test_a_rerun_pins_afresh_and_the_first_run_s_pins_still_hold():
    table = LineageTable()
    task = spec(1)
    table.finished(task, [b"arg"], outputs=1)
    assert table.rerun(task, b"o" * 20) == [b"arg"]
    task.attempt += 1
    assert table.finished(task, [b"arg"], outputs=1) == [b"arg"]  # the re-run's own pins go
    assert table.output_freed(task.task_id) == [b"arg"]


def test_reruns_stop_at_max_retries_and_beyond_the_bound_the_lineage_is_evicted():
    table = LineageTable(limit=1)
    kept, evicted = spec(1, max_retries=1), spec(2)
    table.finished(kept, [], outputs=1)
    assert table.finished(evicted, [b"x"], outputs=1) == [b"x"] and table.evicted == 1
    assert isinstance(table.rerun(evicted, b"o" * 20),
                      exceptions.ObjectReconstructionFailedLineageEvictedError)
    assert table.rerun(kept, b"o" * 20) == []
    kept.attempt = 1
    assert isinstance(table.rerun(kept, b"o" * 20),
                      exceptions.ObjectReconstructionFailedMaxAttemptsExceededError)
    assert isinstance(table.rerun(spec(3, actor=True), b"o" * 20),
                      exceptions.ObjectReconstructionFailedError)
