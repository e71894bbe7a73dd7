"""Concurrency groups, as in Ray: each group of an actor's ``concurrency_groups`` runs its
methods' calls on threads (or, for an async actor, in slots) of its own, so a busy group never
holds up the others; methods without a group, and the built-in ones, use the default group."""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest
from gates import touch, wait_for_file, wait_for_file_async
from helpers import wait_until

import cellfleet as ray
from cellfleet.exceptions import TaskCancelledError

pytestmark = pytest.mark.integration
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@ray.remote(concurrency_groups={"io": 2})
class Threaded:
    @ray.method(concurrency_group="io")
    def wait(self, started: str, gate: str) -> str:
        touch(started)
        wait_for_file(gate)
        return "waited"

    def ping(self) -> str:
        return "pong"


@ray.remote(concurrency_groups={"io": 1})
class Async:
    @ray.method(concurrency_group="io")
    async def wait(self, started: str, gate: str) -> str:
        touch(started)
        await wait_for_file_async(gate)
        return "waited"

    async def ping(self) -> str:
        return "pong"


def test_a_threaded_actors_group_has_its_own_threads(cluster, tmp_path) -> None:
    actor = Threaded.remote()
    gate = str(tmp_path / "gate")
    started = [str(tmp_path / f"started-{i}") for i in range(3)]
    waiting = [actor.wait.remote(path, gate) for path in started]
    try:
        # Two io calls run at once (the group has two threads), the third waits for one of
        # them, and the default group's thread still answers meanwhile.
        wait_until(lambda: all(map(os.path.exists, started[:2])), timeout=30,
                   message="two io calls to run at once")
        assert ray.get(actor.ping.remote(), timeout=30) == "pong"
        assert not os.path.exists(started[2])
    finally:
        touch(gate)
    assert ray.get(waiting, timeout=30) == ["waited"] * 3


def test_an_async_actors_group_has_its_own_slots(cluster, tmp_path) -> None:
    actor = Async.remote()
    gate = str(tmp_path / "gate")
    first_started, second_started = str(tmp_path / "first"), str(tmp_path / "second")
    first = actor.wait.remote(first_started, gate)
    wait_until(lambda: os.path.exists(first_started), timeout=30, message="the first io call")
    second = actor.wait.remote(second_started, gate)  # waits for the io group's one slot
    try:
        assert ray.get(actor.ping.remote(), timeout=30) == "pong"  # the default group is free
        assert not os.path.exists(second_started)
        ray.cancel(second)
        with pytest.raises(TaskCancelledError):
            ray.get(second, timeout=10)
    finally:
        touch(gate)
    assert ray.get(first, timeout=30) == "waited"
    assert not os.path.exists(second_started)


def test_a_method_in_a_group_the_actor_does_not_define_is_refused() -> None:
    @ray.remote
    class Misplaced:
        @ray.method(concurrency_group="nowhere")
        def f(self) -> None:
            return None

    with pytest.raises(ValueError, match="concurrency group 'nowhere'.*concurrency_groups="):
        Misplaced.remote()
