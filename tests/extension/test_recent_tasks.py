"""The overview's recent tasks are the newest submitted, whatever order their records came in
(an owner sends a task that ended at once before older ones still running)."""

from __future__ import annotations

import asyncio

from extension.live import ARRIVAL_SPREAD_S, ClusterState


def _record(i: int, submitted: float) -> dict:
    return {"task_id": f"{i:032x}", "name": f"t{i}", "state": "FINISHED", "job_id": 1,
            "events": {"PENDING_ARGS_AVAIL": submitted, "FINISHED": submitted + 0.01}}


def _state(records: list[dict]) -> ClusterState:
    async def make() -> ClusterState:
        state = ClusterState("c")
        state.model.add_records(records)
        return state

    return asyncio.run(make())


def test_a_record_that_came_early_is_still_listed_by_its_submission() -> None:
    early = _record(0, 100.0 + ARRIVAL_SPREAD_S / 4)  # submitted late, arrived first
    rest = [_record(i, 100.0 + i * 0.001) for i in range(1, 20)]
    names = [row["name"] for row in _state([early, *rest]).recent(limit=5)]
    assert names == ["t0", "t19", "t18", "t17", "t16"]


def test_the_scan_stops_at_records_submitted_well_before_the_newest() -> None:
    old = [_record(i, 10.0) for i in range(50)]
    new = [_record(100 + i, 50.0 + i) for i in range(3)]
    assert [row["name"] for row in _state([*old, *new]).recent(limit=3)] == [
        "t102", "t101", "t100"]
    assert len(_state([*old, *new]).recent(limit=5)) == 5  # three new, then the old ones
