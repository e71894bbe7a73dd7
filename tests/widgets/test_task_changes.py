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


def _job_event(i: int, state: str = "PENDING_ARGS_AVAIL", job: int = 1) -> list:
    info = {"name": "f", "job_id": job, "tag": "t"} if state == "PENDING_ARGS_AVAIL" else {}
    return [i.to_bytes(16, "big"), state, float(i), info]


def test_view_update_carries_group_counts_and_a_bounded_sample_per_job():
    store = TaskEventStore()
    store.add_task_events([_job_event(i) for i in range(50)] + [_job_event(100, job=2)])
    update = store.view_update(0, per_job=10)
    assert update["cursor"] == store.seq
    assert sorted(map(tuple, ([*g[:3], tuple(g[3].items())] for g in update["groups"]))) == [
        (1, "t", "f", (("PENDING_ARGS_AVAIL", 50),)), (2, "t", "f", (("PENDING_ARGS_AVAIL", 1),))]
    ids = [int(r["task_id"], 16) for r in update["tasks"]]
    assert ids == [*range(40, 50), 100]  # the newest of each job, oldest first
    # nothing changed: nothing to send
    assert store.view_update(update["cursor"]) == {"cursor": store.seq, "groups": [], "tasks": []}


def test_view_update_always_sends_the_next_state_of_a_task_it_sent_unfinished():
    store = TaskEventStore()
    store.add_task_events([_job_event(i) for i in range(5)])
    first = store.view_update(0, per_job=5)
    cursor = first["cursor"]
    # many newer tasks change, then the five sent earlier finish: they are sent however many
    store.add_task_events([_job_event(i) for i in range(10, 40)])
    store.add_task_events([_job_event(i, "FINISHED") for i in range(5)])
    update = store.view_update(cursor, per_job=3)
    ids = {int(r["task_id"], 16): r["state"] for r in update["tasks"]}
    assert all(ids[i] == "FINISHED" for i in range(5))
    assert len(ids) == 5 + 3
    (group,) = update["groups"]
    assert group[3] == {"PENDING_ARGS_AVAIL": 30, "FINISHED": 5}


def test_failed_tasks_have_a_budget_of_their_own_and_empty_groups_are_sent_once():
    store = TaskEventStore(max_tasks=5)
    store.add_task_events([_job_event(1), [(1).to_bytes(16, "big"), "FAILED", 2.0, {}]])
    store.add_task_events([_job_event(i) for i in range(2, 6)])
    update = store.view_update(0, per_job=1)
    assert sorted(r["state"] for r in update["tasks"]) == ["FAILED", "PENDING_ARGS_AVAIL"]
    assert store.groups({"job_id": 1})["groups"] == [
        [1, "t", "f", {"FAILED": 1, "PENDING_ARGS_AVAIL": 4}]]
    store.add_task_events([_job_event(i, job=2) for i in range(10, 15)])  # job 1's are dropped
    later = store.view_update(update["cursor"])
    assert [1, "t", "f", {}] in later["groups"]
    assert store.groups({"job_id": 1})["groups"] == []
    assert store.view_update(later["cursor"])["groups"] == []
