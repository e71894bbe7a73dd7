"""A core worker's batch of task events, one per task: the GCS's records come out the same."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellfleet import _tuning
from cellfleet._task_states import TASK_STATES, coalesce
from cellfleet.core.events import YOUNG_S, EventBuffer
from cellfleet.gcs.task_events import TaskEventStore

_event = st.tuples(
    st.sampled_from([b"t1", b"t2", b"t3"]),
    st.sampled_from([*TASK_STATES, "FAULT"]),
    st.floats(0, 100, allow_nan=False),
    st.one_of(st.none(), st.dictionaries(st.sampled_from(["name", "node_id", "error"]),
                                         st.text(max_size=3), max_size=2)),
).map(list)


def _records(store: TaskEventStore) -> dict:
    return {task_id: dict(record) for task_id, record in store.tasks.items()}


@settings(max_examples=300, deadline=None)
@given(earlier=st.lists(_event, max_size=6), batch=st.lists(_event, max_size=12))
def test_a_coalesced_batch_makes_the_records_its_events_make(earlier: list,
                                                             batch: list) -> None:
    one_by_one, coalesced = TaskEventStore(), TaskEventStore()
    for store in (one_by_one, coalesced):
        store.add_task_events([list(event) for event in earlier])
    one_by_one.add_task_events([list(event) for event in batch])
    merged = coalesce([list(event) for event in batch])
    coalesced.add_task_events(merged)
    assert len(merged) == len({event[0] for event in batch})
    assert _records(coalesced) == _records(one_by_one)
    assert coalesced.summarize() == one_by_one.summarize()


class _Gcs:
    is_open, unsent_bytes = True, 0

    def __init__(self) -> None:
        self.sent: list = []

    def send(self, message: object) -> None:
        self.sent.append(message)


def test_a_task_that_ended_before_the_flush_sends_one_event_without_running() -> None:
    events, gcs = EventBuffer(), _Gcs()
    events.task(b"done", "SUBMITTED_TO_WORKER", {"node_id": "n1"})
    events.task(b"done", "RUNNING", {"worker_pid": 7})
    events.task(b"long", "RUNNING", {"worker_pid": 7})
    events.ended(b"done")
    events.task(b"done", "FINISHED", {"end_time": 2.0})
    events.flush(gcs)
    (batch,) = gcs.sent
    done, long = batch.tasks
    assert (done[0], done[1], sorted(done[2])) == (b"done", "FINISHED",
                                                   ["FINISHED", "SUBMITTED_TO_WORKER"])
    assert done[3] == {"node_id": "n1", "end_time": 2.0}
    assert (long[0], long[1]) == (b"long", "RUNNING")  # still running: it is shown so


def test_the_periodic_flush_keeps_young_tasks_back_until_they_end_or_age(monkeypatch) -> None:
    events, gcs = EventBuffer(), _Gcs()
    events.task(b"quick", "PENDING_ARGS_AVAIL", {"name": "f"})
    events.task(b"slow", "PENDING_ARGS_AVAIL", {"name": "g"})
    events.flush(gcs, everything=False)
    assert gcs.sent == []  # both young and under way
    events.task(b"quick", "FINISHED", {"end_time": 1.0})
    events.flush(gcs, everything=False)
    (batch,) = gcs.sent
    assert [(e[0], e[1], e[3]) for e in batch.tasks] == [
        (b"quick", "FINISHED", {"name": "f", "end_time": 1.0})]  # one event: all it did
    later = time.time() + 2 * YOUNG_S
    monkeypatch.setattr(time, "time", lambda: later)
    events.flush(gcs, everything=False)
    assert [(e[0], e[1]) for e in gcs.sent[-1].tasks] == [(b"slow", "PENDING_ARGS_AVAIL")]


def test_a_full_flush_sends_young_tasks_too() -> None:
    events, gcs = EventBuffer(), _Gcs()
    events.task(b"t", "PENDING_ARGS_AVAIL", {"name": "f"})
    events.flush(gcs, everything=False)
    events.flush(gcs)  # before a request to the GCS: it answers with this task in
    assert [(e[0], e[1]) for e in gcs.sent[-1].tasks] == [(b"t", "PENDING_ARGS_AVAIL")]


def test_young_tasks_kept_back_are_bounded() -> None:
    events, gcs = EventBuffer(max_size=3), _Gcs()
    for i in range(3):
        events.task(bytes([i]), "PENDING_ARGS_AVAIL")
    events.flush(gcs, everything=False)
    assert gcs.sent == [] and len(events._young) == 3
    for i in range(3, 6):
        events.task(bytes([i]), "PENDING_ARGS_AVAIL")
    events.flush(gcs, everything=False)
    assert [e[0] for e in gcs.sent[-1].tasks] == [bytes([i]) for i in range(3)]  # oldest go
    assert [e[0] for e in events._young] == [bytes([i]) for i in range(3, 6)]


@pytest.fixture
def default_gc():
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


def test_the_young_generation_is_raised_only_where_nobody_chose(default_gc, monkeypatch) -> None:
    monkeypatch.delenv(_tuning.GC_THRESHOLD_ENV, raising=False)
    _tuning.tune_process()
    assert gc.get_threshold()[0] == _tuning.GEN0_THRESHOLD
    gc.set_threshold(1234, 10, 10)  # a process's own choice stays
    _tuning.tune_process()
    assert gc.get_threshold()[0] == 1234


def test_the_threshold_can_be_left_alone(default_gc, monkeypatch) -> None:
    monkeypatch.setenv(_tuning.GC_THRESHOLD_ENV, "0")
    _tuning.tune_process()
    assert gc.get_threshold() == (700, 10, 10)
    monkeypatch.setenv(_tuning.GC_THRESHOLD_ENV, "lots")
    with pytest.raises(ValueError, match="CELLFLEET_GC_THRESHOLD"):
        _tuning.tune_process()


def test_a_runtime_process_runs_as_sched_batch_unless_told_not_to(default_gc) -> None:
    script = ("import os, gc; from cellfleet._tuning import tune_process; "
              "tune_process(runtime=True); "
              "print(os.sched_getscheduler(0) == os.SCHED_BATCH, gc.get_freeze_count() > 0)")
    for env, expected in (({}, "True True"), ({_tuning.SCHED_BATCH_ENV: "0"}, "False True")):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=60)
        assert done.stdout.split() == expected.split(), done.stderr
