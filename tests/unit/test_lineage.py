"""The owner's lineage table: arguments kept while outputs live, re-runs and their limits."""

from __future__ import annotations

from cellfleet import exceptions
from cellfleet.core.lineage import SPEC_OVERHEAD, LineageTable
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


def test_reruns_stop_at_max_retries_and_beyond_the_bound_the_oldest_lineage_goes():
    table = LineageTable(limit=1)
    evicted, kept = spec(1), spec(2, max_retries=1)
    table.finished(evicted, [b"x"], outputs=1)
    assert table.finished(kept, [], outputs=1) == [b"x"] and table.evicted == 1
    assert isinstance(table.rerun(evicted, b"o" * 20),
                      exceptions.ObjectReconstructionFailedLineageEvictedError)
    assert table.rerun(kept, b"o" * 20) == []
    kept.attempt = 1
    assert isinstance(table.rerun(kept, b"o" * 20),
                      exceptions.ObjectReconstructionFailedMaxAttemptsExceededError)
    assert isinstance(table.rerun(spec(3, actor=True), b"o" * 20),
                      exceptions.ObjectReconstructionFailedError)


def test_past_the_memory_cap_the_oldest_specs_go_first():
    """Each spec costs its inline arguments plus an overhead; the table never holds more."""
    def sized(n: int, nbytes: int) -> TaskSpec:
        task = spec(n)
        task.args = b"a" * nbytes
        return task

    table = LineageTable(max_bytes=3 * (1000 + SPEC_OVERHEAD))
    tasks = [sized(n, 1000) for n in range(5)]
    released = [table.finished(task, [bytes([n])], outputs=1) for n, task in enumerate(tasks)]
    assert released == [[], [], [], [b"\x00"], [b"\x01"]]
    assert table.bytes <= table.max_bytes and len(table) == 3 and table.evicted == 2
    assert isinstance(table.rerun(tasks[0], b"o" * 20),
                      exceptions.ObjectReconstructionFailedLineageEvictedError)
    assert table.rerun(tasks[4], b"o" * 20) == [b"\x04"]
    huge = sized(9, 10 * table.max_bytes)  # larger than the cap alone: never kept
    assert table.finished(huge, [b"h"], outputs=1) == [b"h"] and len(table) == 3
    for task in tasks[2:]:
        table.output_freed(task.task_id)
    assert table.bytes == 0 and len(table) == 0
