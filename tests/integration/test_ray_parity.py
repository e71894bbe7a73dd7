"""Ray behaviours that Ray's own core tests check: handles from ``get_actor`` keep an actor
alive, the size limit on exported code, ``__ray_invocation_decorator__`` and
``ObjectRef.nil()``/``from_random()`` (node resources: test_node_resources.py)."""

from __future__ import annotations

import os
import pickle
import sys
import warnings

import cloudpickle
import pytest
from gates import touch, wait_for_file
from helpers import wait_until

import cellfleet as ray

pytestmark = pytest.mark.integration
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@ray.remote
class Named:
    def pid(self) -> int:
        return os.getpid()


@ray.remote
class Holder:
    """Looks an actor up by name and keeps (or drops) the handle."""

    def __init__(self) -> None:
        self.handle = None

    def look_up(self, name: str) -> int:
        self.handle = ray.get_actor(name)
        return ray.get(self.handle.pid.remote())

    def drop(self) -> None:
        self.handle = None


def _name_taken(name: str) -> bool:
    try:
        ray.get_actor(name)
        return True
    except ValueError:
        return False


def test_a_looked_up_handle_keeps_the_actor_alive_after_the_first_goes(cluster) -> None:
    first = Named.options(name="kept").remote()
    pid = ray.get(first.pid.remote(), timeout=30)
    looked_up = ray.get_actor("kept")
    del first
    for _ in range(3):  # each call goes through the owner's count of handles
        assert ray.get(looked_up.pid.remote(), timeout=30) == pid
    del looked_up
    wait_until(lambda: not _name_taken("kept"), timeout=20,
               message="the actor to go with its last handle")


def test_a_handle_looked_up_in_another_process_keeps_the_actor_alive(cluster) -> None:
    target = Named.options(name="borrowed").remote()
    pid = ray.get(target.pid.remote(), timeout=30)
    holder = Holder.remote()
    assert ray.get(holder.look_up.remote("borrowed"), timeout=30) == pid
    del target
    assert ray.get(ray.get_actor("borrowed").pid.remote(), timeout=30) == pid
    ray.get(holder.drop.remote(), timeout=30)
    wait_until(lambda: not _name_taken("borrowed"), timeout=20,
               message="the actor to go once the other process dropped its handle")


def test_a_detached_actor_outlives_every_handle(cluster) -> None:
    actor = Named.options(name="stays", lifetime="detached").remote()
    ray.get(actor.pid.remote(), timeout=30)
    del actor
    handle = ray.get_actor("stays")
    del handle
    assert ray.get(ray.get_actor("stays").pid.remote(), timeout=30)
    ray.kill(ray.get_actor("stays"))


CAPTURED = bytearray(101 * 10**6)  # past the 100 MB limit once pickled


def test_code_capturing_a_large_object_is_refused_before_it_is_sent(cluster) -> None:
    @ray.remote
    def f() -> int:
        return len(CAPTURED)

    @ray.remote
    class Actor:
        def size(self) -> int:
            return len(CAPTURED)

    with pytest.raises(ValueError, match=r"The remote function f is too large .*ray.put\(\)"):
        f.remote()
    with pytest.raises(ValueError, match="The actor Actor is too large"):
        Actor.remote()
    with pytest.raises(ValueError, match="too large"):  # refused every time, not only once
        f.options(num_cpus=0).remote()


def test_large_code_below_the_limit_runs_with_a_warning_at_the_call(cluster) -> None:
    captured = bytearray(11 * 10**6)

    @ray.remote
    def g() -> int:
        return len(captured)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref = g.remote()
    assert ray.get(ref, timeout=60) == len(captured)
    (warning,) = [w for w in caught if "very large" in str(w.message)]
    assert "The remote function g is very large (10 MiB)" in str(warning.message)
    assert warning.filename == __file__


def test_an_invocation_decorator_wraps_the_submission(cluster) -> None:
    def reversing(submit):
        def call(args, kwargs):
            return submit(args[::-1], {"d": 5}), kwargs

        return call

    def f(a, b, c, d=None):
        return a, b, c, d

    f.__ray_invocation_decorator__ = reversing
    remote_f = ray.remote(f)
    ref, kwargs = remote_f.remote(1, 2, 3, d=4)
    assert kwargs == {"d": 4}
    assert ray.get(ref, timeout=30) == (3, 2, 1, 5)
    with pytest.raises(TypeError, match="do not fit its signature"):
        remote_f.remote(1, 2, 3, 4, 5)  # the decorated call is checked: 5 reversed args


def test_nil_and_random_object_refs() -> None:
    nil = ray.ObjectRef.nil()
    assert nil.is_nil() and nil == ray.ObjectRef.nil()
    first, second = ray.ObjectRef.from_random(), ray.ObjectRef.from_random()
    assert not first.is_nil() and first != second
    assert len(first.binary()) == len(nil.binary())
    assert pickle.loads(pickle.dumps(first)) == first


def test_an_object_ref_made_from_an_id_checks_its_length() -> None:
    ray_id = b"0011223344556677889900001111"  # Ray's 28 bytes name an object too
    assert ray.ObjectRef(ray_id).binary() == ray_id
    for wrong in (ray_id + b"1234", b"0123456789"):
        with pytest.raises(ValueError, match="needs to have length 20"):
            ray.ObjectRef(wrong)


def _death_cause(actor) -> str | None:
    from cellfleet.util.state import list_actors

    (record,) = [a for a in list_actors() if a["actor_id"] == actor._actor_id.hex()]
    return record["death_cause"] if record["state"] == "DEAD" else None


def test_a_queue_shuts_down_gracefully_unless_forced(cluster) -> None:
    from cellfleet.util.queue import Queue

    graceful, forced = Queue(), Queue()
    graceful.put(1)
    actors = graceful.actor, forced.actor
    graceful.shutdown(grace_period_s=30)  # its actor exits behind the put
    forced.shutdown(force=True)
    wait_until(lambda: None not in map(_death_cause, actors), timeout=20,
               message="both queue actors to be dead")
    graceful_cause, forced_cause = map(_death_cause, actors)
    assert forced_cause == "killed" and graceful_cause != "killed"  # it exited by itself
    with pytest.raises(RuntimeError, match="shut down"):
        graceful.put(2)


@ray.remote(max_pending_calls=2)
class Limited:
    def wait(self, gate: str) -> str:
        wait_for_file(gate)
        return "done"


def test_max_pending_calls_refuses_calls_past_the_limit(cluster, tmp_path) -> None:
    actor = Limited.remote()
    gate = str(tmp_path / "gate")
    pending = [actor.wait.remote(gate) for _ in range(2)]
    try:
        with pytest.raises(ray.exceptions.PendingCallsLimitExceeded, match="more than 2 tasks"):
            actor.wait.remote(gate)
    finally:
        touch(gate)
    assert ray.get(pending, timeout=30) == ["done", "done"]

    def accepts_again() -> bool:
        try:
            return ray.get(actor.wait.remote(gate), timeout=30) == "done"
        except ray.exceptions.PendingCallsLimitExceeded:
            return False  # the finished calls are not counted off yet

    wait_until(accepts_again, timeout=20, message="the handle to take calls again")
    with pytest.raises(ValueError, match="max_pending_calls must be -1"):
        Limited.options(max_pending_calls=0)


@ray.remote(max_restarts=1, max_task_retries=1)
class Restartable:
    def __init__(self) -> None:
        ctx = ray.get_runtime_context()
        self.seen_in_init = (ctx.get_actor_id(), ctx.was_current_actor_reconstructed)

    def seen(self) -> tuple:
        return self.seen_in_init, ray.get_runtime_context().was_current_actor_reconstructed


def test_an_actor_knows_its_id_and_whether_it_was_restarted_from_its_constructor(
        cluster) -> None:
    actor = Restartable.remote()
    actor_id = actor._actor_id.hex()
    assert ray.get(actor.seen.remote(), timeout=30) == ((actor_id, False), False)
    ray.kill(actor, no_restart=False)  # its process goes; its owner starts it again
    assert ray.get(actor.seen.remote(), timeout=60) == ((actor_id, True), True)
    assert not ray.get_runtime_context().was_current_actor_reconstructed  # not an actor
