"""User code that exits or raises an unprintable exception fails the call, never the worker.

Regression: ``sys.exit()`` or an exception whose ``__str__`` raises, in a threaded or async
actor, left the call unanswered for good (and an async actor's event loop dead, so every later
call hung); in a plain actor or a task it killed the worker.
"""

from __future__ import annotations

import asyncio
import os
import sys

import cloudpickle
import pytest
from helpers import alive

import cellfleet as ray
from cellfleet import exceptions

pytestmark = pytest.mark.integration

# Workers cannot import this test module: ship its classes by value with the functions.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TIMEOUT = 30


class Unprintable(Exception):
    """An exception whose ``__str__`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


def fault(kind: str) -> None:
    if kind == "exit":
        sys.exit()
    if kind == "exit-code":
        sys.exit(3)
    if kind == "exit-message":
        sys.exit("leaving now")
    if kind == "unprintable":
        raise Unprintable("never shown")
    raise AssertionError(kind)


FAULTS = ["exit", "exit-code", "exit-message", "unprintable"]


class Counter:
    """Counts calls that succeed; ``fail`` runs one of the faults."""

    def __init__(self) -> None:
        self.count = 0

    def bump(self) -> tuple[int, int]:
        self.count += 1
        return self.count, os.getpid()

    def fail(self, kind: str) -> None:
        fault(kind)


class AsyncCounter:
    def __init__(self) -> None:
        self.count = 0

    async def bump(self) -> tuple[int, int]:
        await asyncio.sleep(0)
        self.count += 1
        return self.count, os.getpid()

    async def fail(self, kind: str) -> None:
        await asyncio.sleep(0)
        fault(kind)

    async def wait_for(self, event: str, path: str) -> str:
        """Return once ``path`` exists (another call creates it)."""
        while not os.path.exists(path):
            await asyncio.sleep(0.01)
        return event

    async def exit_in_background(self) -> None:
        """Start a task of the actor's own that exits; the call itself returns."""
        async def leave() -> None:
            sys.exit(5)

        self.background = asyncio.get_running_loop().create_task(leave())

    async def stop_loop(self) -> str:
        asyncio.get_running_loop().stop()
        return "stopping"


ACTORS = {
    "plain": lambda: ray.remote(Counter).remote(),
    "threaded": lambda: ray.remote(max_concurrency=4)(Counter).remote(),
    "async": lambda: ray.remote(AsyncCounter).remote(),
}


def assert_reports(error: BaseException, kind: str, method: str) -> None:
    """The error says which call failed and what happened in it."""
    assert isinstance(error, exceptions.RayTaskError)
    assert not isinstance(error, SystemExit)  # a remote exit must not end the driver
    assert method in error.function_name
    text = str(error)
    assert "fault" in text  # the traceback reaches the user's code
    if kind.startswith("exit"):
        assert isinstance(error.cause, SystemExit)
        assert "SystemExit" in text and "keep running" in text
        if kind == "exit-code":
            assert "SystemExit: 3" in text
        if kind == "exit-message":
            assert "SystemExit: leaving now" in text
    else:
        assert isinstance(error, Unprintable)
        assert "Unprintable" in text


@pytest.mark.parametrize("kind", FAULTS)
@pytest.mark.parametrize("actor_kind", list(ACTORS))
def test_fault_in_an_actor_method_fails_the_call_and_keeps_the_actor(cluster, actor_kind, kind):
    actor = ACTORS[actor_kind]()
    count, pid = ray.get(actor.bump.remote(), timeout=TIMEOUT)
    assert count == 1
    with pytest.raises(exceptions.RayTaskError) as info:
        ray.get(actor.fail.remote(kind), timeout=TIMEOUT)
    assert_reports(info.value, kind, "fail")
    assert info.value.pid == pid
    # The same actor, its state intact, answers every later call.
    assert ray.get([actor.bump.remote() for _ in range(3)], timeout=TIMEOUT) == [
        (2, pid), (3, pid), (4, pid)]
    ray.kill(actor)


def test_fault_in_an_async_actor_does_not_stop_its_other_calls(cluster, tmp_path):
    actor = ray.remote(AsyncCounter).remote()
    go = str(tmp_path / "go")
    waiting = actor.wait_for.remote("finished", go)
    failing = [actor.fail.remote(kind) for kind in FAULTS]
    for ref, kind in zip(failing, FAULTS):
        with pytest.raises(exceptions.RayTaskError) as info:
            ray.get(ref, timeout=TIMEOUT)
        assert_reports(info.value, kind, "fail")
    open(go, "w").close()
    assert ray.get(waiting, timeout=TIMEOUT) == "finished"
    ray.kill(actor)


def test_background_task_of_an_async_actor_that_exits_leaves_the_loop_running(cluster):
    actor = ray.remote(AsyncCounter).remote()
    ray.get(actor.exit_in_background.remote(), timeout=TIMEOUT)
    assert [ray.get(actor.bump.remote(), timeout=TIMEOUT)[0] for _ in range(3)] == [1, 2, 3]
    ray.kill(actor)


def test_async_actor_whose_code_stops_its_loop_keeps_answering(cluster):
    actor = ray.remote(AsyncCounter).remote()
    assert ray.get(actor.stop_loop.remote(), timeout=TIMEOUT) == "stopping"
    assert [ray.get(actor.bump.remote(), timeout=TIMEOUT)[0] for _ in range(3)] == [1, 2, 3]
    ray.kill(actor)


def test_fault_in_the_constructor_fails_the_actor_clearly(cluster):
    class ExitsAtBirth:
        def __init__(self) -> None:
            sys.exit(7)

        def ping(self) -> str:
            return "pong"

    actor = ray.remote(ExitsAtBirth).remote()
    with pytest.raises(exceptions.RayActorError) as info:
        ray.get(actor.ping.remote(), timeout=TIMEOUT)
    assert "SystemExit: 7" in str(info.value)


@ray.remote(max_retries=0)
def failing_task(kind: str) -> None:
    fault(kind)


@ray.remote
def worker_pid() -> int:
    return os.getpid()


@pytest.mark.parametrize("kind", FAULTS)
def test_fault_in_a_task_fails_it_and_keeps_the_worker(cluster, kind):
    with pytest.raises(exceptions.RayTaskError) as info:
        ray.get(failing_task.remote(kind), timeout=TIMEOUT)
    assert_reports(info.value, kind, "failing_task")
    assert alive({info.value.pid}) == {info.value.pid}  # the worker that ran it lives on
    assert len(ray.get([worker_pid.remote() for _ in range(8)], timeout=TIMEOUT)) == 8


def test_unprintable_exception_in_a_threaded_actor_from_many_threads(cluster):
    actor = ray.remote(max_concurrency=4)(Counter).remote()
    refs = [actor.fail.remote("unprintable") for _ in range(8)]
    for ref in refs:
        with pytest.raises(Unprintable):
            ray.get(ref, timeout=TIMEOUT)
    assert ray.get(actor.bump.remote(), timeout=TIMEOUT)[0] == 1
    ray.kill(actor)
