"""The GCS's task and object records: bounded, oldest dropped and counted."""

from __future__ import annotations

from cellfleet.gcs.task_events import TaskEventStore


def events_of(i: int) -> list:
    task_id = i.to_bytes(4, "big")
    return [[task_id, "PENDING_ARGS_AVAIL", 1.0, {"name": "f", "required_resources": {"CPU": 1.0},
                                                   "args": [f"arg{i}"]}],
            [task_id, "FINISHED", 2.0, {"end_time": 2.0}]]


def test_task_records_beyond_the_bound_are_dropped_oldest_first() -> None:
    store = TaskEventStore(max_tasks=3, max_objects=2)
    for i in range(5):
        store.add_task_events(events_of(i))
    assert [r["args"] for r in store.tasks.values()] == [["arg2"], ["arg3"], ["arg4"]]
    assert store.dropped_tasks == 2
    assert store.summarize()["summary"]["f"]["state_counts"] == {"FINISHED": 3}
    store.add_object_events([[bytes([i]), "CREATED", {"size": i}] for i in range(4)])
    assert len(store.objects) == 2 and store.dropped_objects == 2


def test_records_keep_their_values_when_compacted() -> None:
    store = TaskEventStore()
    store.add_task_events(events_of(1) + events_of(2))
    first, second = store.tasks.values()
    assert first["required_resources"] == {"CPU": 1.0}
    assert first["required_resources"] is second["required_resources"]  # one shared shape
    assert first["events"] == {"PENDING_ARGS_AVAIL": 1.0, "FINISHED": 2.0}
    assert (first["state"], first["name"], first["end_time"]) == ("FINISHED", "f", 2.0)
