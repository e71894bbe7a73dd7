"""Actors that restart: ``max_restarts`` runs the constructor again when the actor's process
dies, ``max_task_retries`` replays the calls that were running, and what is beyond the limits
fails with ActorDiedError saying why."""

from __future__ import annotations

import os
import signal
import sys

import cloudpickle
import pytest
from gates import touch, wait_for_file
from helpers import wait_until

import cellfleet as ray
from cellfleet import exceptions
from cellfleet.util.state import list_actors

pytestmark = pytest.mark.integration
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@ray.remote(max_restarts=2, max_task_retries=1)
class Counter:
    def __init__(self) -> None:
        self.count = 0

    def pid(self) -> int:
        return os.getpid()

    def add(self) -> int:
        self.count += 1
        return self.count

    def block(self, started: str, gate: str) -> int:
        touch(started)
        wait_for_file(gate)
        return os.getpid()


@ray.remote
class Fragile:
    def pid(self) -> int:
        return os.getpid()


def state_of(actor) -> dict:
    (record,) = [a for a in list_actors() if a["actor_id"] == actor._actor_id.hex()]
    return record


def test_a_dead_actor_restarts_from_its_constructor(fresh_cluster):
    fresh_cluster(num_cpus=2)
    counter = Counter.remote()
    assert ray.get([counter.add.remote(), counter.add.remote()], timeout=30) == [1, 2]
    first = ray.get(counter.pid.remote(), timeout=30)
    os.kill(first, signal.SIGKILL)
    assert ray.get(counter.add.remote(), timeout=60) == 1  # a fresh instance
    assert ray.get(counter.pid.remote(), timeout=30) != first
    wait_until(lambda: state_of(counter)["state"] == "ALIVE"
               and state_of(counter).get("num_restarts") == 1, message="the restart recorded")


def test_a_call_running_when_the_actor_died_is_replayed(fresh_cluster, tmp_path):
    fresh_cluster(num_cpus=2)
    counter = Counter.remote()
    pid = ray.get(counter.pid.remote(), timeout=30)
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    call = counter.block.remote(started, gate)
    wait_for_file(started)
    os.kill(pid, signal.SIGKILL)
    touch(gate)  # the replayed call runs to its end in the new process
    assert ray.get(call, timeout=60) != pid


def test_beyond_max_restarts_the_actor_is_dead(fresh_cluster):
    fresh_cluster(num_cpus=2)
    counter = Counter.remote()
    for _ in range(3):  # two restarts allowed, the third death is final
        os.kill(ray.get(counter.pid.remote(), timeout=60), signal.SIGKILL)
    with pytest.raises(exceptions.ActorDiedError):
        ray.get(counter.pid.remote(), timeout=60)
    wait_until(lambda: state_of(counter)["state"] == "DEAD", message="the actor dead")


def test_an_actor_without_restarts_dies_with_its_process(fresh_cluster):
    fresh_cluster(num_cpus=2)
    fragile = Fragile.remote()
    os.kill(ray.get(fragile.pid.remote(), timeout=30), signal.SIGKILL)
    with pytest.raises(exceptions.ActorDiedError):
        ray.get(fragile.pid.remote(), timeout=30)


def test_kill_with_no_restart_false_restarts_it(fresh_cluster):
    fresh_cluster(num_cpus=2)
    counter = Counter.remote()
    first = ray.get(counter.pid.remote(), timeout=30)
    ray.kill(counter, no_restart=False)
    wait_until(lambda: ray.get(counter.pid.remote(), timeout=60) != first,
               message="a new process")


def test_a_kill_that_meets_a_restart_under_way_kills_the_restarted_process(fresh_cluster):
    fresh_cluster(num_cpus=1)
    once = Fragile.options(num_cpus=1, max_restarts=1).remote()
    ray.get(once.pid.remote(), timeout=30)
    ray.kill(once, no_restart=False)  # restart 1 of 1 begins
    ray.kill(once, no_restart=False)  # meant for the process that restart starts
    wait_until(lambda: state_of(once)["state"] == "DEAD", message="the actor dead")
    with pytest.raises(exceptions.RayActorError):
        ray.get(once.pid.remote(), timeout=30)
    after = Fragile.options(num_cpus=1).remote()  # the only CPU is free again
    assert ray.get(after.pid.remote(), timeout=30)
