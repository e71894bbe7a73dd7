"""Placement groups in Redis storage: a killed GCS restarted on the same Redis knows its
groups again (by id and by name) and places them anew; removed groups stay removed."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from helpers import wait_until
from test_gcs_redis import _try, ask_gcs, redis_server, restart_gcs, stop  # noqa: F401

import cellfleet
from cellfleet import _messages as m
from cellfleet._session import Session
from cellfleet.util import get_placement_group, placement_group, remove_placement_group
from cellfleet.util.scheduling_strategies import PlacementGroupSchedulingStrategy

pytestmark = pytest.mark.integration


@cellfleet.remote(num_cpus=1)
def in_group() -> str:
    return "ran"


def test_placement_groups_survive_a_gcs_restart(redis_server: str, fresh_cluster) -> None:  # noqa: F811
    info = fresh_cluster(num_cpus=2, object_store_memory=64 * 2**20, gcs_storage=redis_server)
    kept = placement_group([{"CPU": 1}], strategy="PACK", name="kept")
    gone = placement_group([{"CPU": 1}])
    assert kept.wait(10) and gone.wait(10)
    remove_placement_group(gone)
    session = Session(Path(info["session_dir"]))
    client = redis.Redis.from_url(redis_server)
    table = f"cellfleet:{session.name}:placement_groups"
    try:
        wait_until(lambda: client.hkeys(table) == [kept.id.binary()],
                   message="the removal written through to Redis")
    finally:
        client.close()

    new_gcs = restart_gcs(session, redis_server)
    try:
        address, token = info["gcs_address"], session.token()

        def state(pg_id: bytes) -> object:
            (record,) = ask_gcs(address, token, m.GetPlacementGroup(pg_id))
            return record and record["state"]

        wait_until(lambda: _try(state, kept.id.binary()) == "CREATED", timeout=20,
                   message="the reloaded group placed again once the raylet registered")
        assert _try(state, gone.id.binary()) is None
        wait_until(lambda: _try(get_placement_group, "kept"), timeout=10,
                   message="the driver to reach the restarted GCS")
        assert get_placement_group("kept").id == kept.id
        strategy = PlacementGroupSchedulingStrategy(kept)
        assert cellfleet.get(in_group.options(scheduling_strategy=strategy).remote(),
                             timeout=30) == "ran"
        remove_placement_group(kept)
        assert kept.wait(1) is False
    finally:
        cellfleet.shutdown()
        stop(new_gcs)
