"""What a task's record (the state API, the views) says about how it ended."""

from __future__ import annotations

import sys

import cloudpickle
import pytest
from gates import touch, wait_for_file
from helpers import wait_until

import cellfleet as ray
from cellfleet import exceptions
from cellfleet.util.state import list_tasks

pytestmark = pytest.mark.integration
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@ray.remote
def hold(started: str, gate: str) -> None:
    touch(started)
    wait_for_file(gate)


def record_of(name: str) -> dict:
    found = [t for t in list_tasks(limit=10_000) if t.get("name") == name
             and t["state"] == "FAILED"]
    return found[-1] if found else {}


def test_cancelled_tasks_say_cancelled_running_or_not(fresh_cluster, tmp_path):
    fresh_cluster(num_cpus=1)
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    running = hold.options(name="running").remote(started, gate)
    queued = hold.options(name="queued").remote(started + ".2", gate)  # behind it: 1 CPU
    wait_for_file(started)
    ray.cancel(queued)
    ray.cancel(running)
    for ref in (running, queued):
        with pytest.raises(exceptions.TaskCancelledError):
            ray.get(ref, timeout=30)
    for name in ("running", "queued"):
        wait_until(lambda n=name: "TaskCancelledError" in (
            record_of(n).get("error_message") or ""), message=f"the {name} task's record")
    touch(gate)
