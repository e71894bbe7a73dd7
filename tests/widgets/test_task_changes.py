"""The GCS's incremental cursor over task events and its running per-function counts."""

from __future__ import annotations

from cellfleet.gcs.task_events import TaskEventStore


def _event(i: int, state: str = "PENDING_ARGS_AVAIL", name: str = "f") -> list:
    info = {"name": name} if state == "PENDING_ARGS_AVAIL" else {}
    return [i.to_bytes(16, "big"), state, float(i), info]


def test_changes_since_returns_only_what_changed_after_the_cursor():
    store = TaskEventStore()
    store.add_task_events([_event(i) for i in range(5)])
    first = store.changes_since(0, 100)
    assert [r["task_id"][-2:] for r in first["tasks"]] == ["00", "01", "02", "03", "04"]
    assert store.changes_since(first["cursor"], 100)["tasks"] == []
    store.add_task_events([_event(2, "RUNNING"), _event(7)])
    later = store.changes_since(first["cursor"], 100)
    assert [(r["task_id"][-2:], r["state"]) for r in later["tasks"]] == [
        ("02", "RUNNING"), ("07", "PENDING_ARGS_AVAIL")]
    assert later["total_tasks"] == 6 and not later["truncated"]


def test_changes_since_keeps_the_newest_when_limited():
    store = TaskEventStore()
    store.add_task_events([_event(i) for i in range(10)])
    page = store.changes_since(0, 3)
    assert page["truncated"]
    assert [r["task_id"][-2:] for r in page["tasks"]] == ["07", "08", "09"]


def test_summary_counts_are_kept_as_events_arrive():
    store = TaskEventStore(max_tasks=4)
    store.add_task_events([_event(1, "RUNNING")])  # the worker's event before the owner's
    store.add_task_events([_event(1), _event(2), _event(3, name="g")])
    store.add_task_events([_event(2, "FINISHED")])
    summary = store.summarize()["summary"]
    assert summary["f"]["state_counts"] == {"RUNNING": 1, "FINISHED": 1}
    assert summary["g"]["state_counts"] == {"PENDING_ARGS_AVAIL": 1}
    store.add_task_events([_event(i, name="h") for i in range(4, 7)])  # drops 1 and 2
    summary = store.summarize()
    assert set(summary["summary"]) == {"g", "h"} and summary["dropped_tasks"] == 2
    assert len(store.changes_since(0, 100)["tasks"]) == 4
