"""An actor created by a task is never placed on that task's worker: killing the actor must
not take the objects the task's worker owns with it."""

from __future__ import annotations

import sys

import cloudpickle
import numpy as np
import pytest

import cellfleet

pytestmark = pytest.mark.integration
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@cellfleet.remote(num_cpus=0)
class Pinger:
    def ping(self) -> str:
        return "pong"


@cellfleet.remote
def make_object_and_actor():
    owned = cellfleet.put(np.ones(50_000))  # owned by this task's worker
    return [owned], Pinger.remote()


def test_killing_an_actor_made_by_a_task_keeps_that_tasks_objects(fresh_cluster) -> None:
    fresh_cluster(num_cpus=1)
    for _ in range(5):
        box, pinger = cellfleet.get(make_object_and_actor.remote(), timeout=60)
        assert cellfleet.get(pinger.ping.remote(), timeout=60) == "pong"
        cellfleet.kill(pinger)
        assert cellfleet.get(box[0], timeout=60).sum() == 50_000.0
