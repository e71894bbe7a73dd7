"""Ray's core API surface beyond the tutorial patterns, through ``import cellfleet as ray``.

Options Ray code passes to ``init`` and ``@remote``, the built-in actor methods and
``exit_actor``, actor classes that keep their class's attributes, argument checks at
``.remote()``, ``ObjectRef`` futures, named-actor listing, ``kill`` freeing a name, the
runtime context of an actor, and workers that import what the driver script's folder holds.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import cloudpickle
import pytest
from helpers import free_port, wait_until

import cellfleet as ray
from cellfleet import exceptions
from cellfleet.job_config import JobConfig
from cellfleet.util.state import list_tasks

pytestmark = pytest.mark.integration

# Workers cannot import this test module: ship its helpers by value with the functions.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# -- before any cluster -------------------------------------------------------------------

def test_api_calls_raise_before_init_when_auto_connect_is_off(monkeypatch):
    monkeypatch.setenv("RAY_ENABLE_AUTO_CONNECT", "0")

    @ray.remote
    def task():
        return 1

    calls = [task.remote, lambda: ray.put(1), lambda: ray.get([]), lambda: ray.wait([]),
             lambda: ray.kill(None), lambda: ray.cancel(None), ray.nodes,
             lambda: ray.get_actor("someone")]
    for call in calls:
        with pytest.raises(exceptions.RaySystemError, match="has not been started"):
            call()
    assert not ray.is_initialized()


def test_init_at_an_address_where_nothing_listens_says_so():
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match=f"nothing answers at {address}"):
        ray.init(address=address)
    assert not ray.is_initialized()


def test_submodules_are_attributes_after_import():
    code = ("import cellfleet as ray; "
            "print(ray.util.ActorPool.__name__, ray.runtime_context.__name__, "
            "ray.actor.exit_actor.__name__, ray.job_config.JobConfig.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out == ["ActorPool", "cellfleet.runtime_context", "exit_actor", "JobConfig"]


def test_options_are_checked_with_rays_errors():
    def f():
        return 1

    class A:
        pass

    with pytest.raises(TypeError, match="The type of keyword 'max_retries' must be"):
        ray.remote(max_retries=0.5)(f)
    with pytest.raises(ValueError, match="'max_calls' only accepts None, 0 or a positive"):
        ray.remote(max_calls=-1)(f)
    with pytest.raises(ValueError, match="'max_restarts' only accepts None, 0, -1"):
        ray.remote(max_restarts=-2)(A)
    with pytest.raises(ValueError, match="precision of the fractional quantity of resource"):
        ray.remote(num_gpus=0.0000001)(f)
    with pytest.raises(ValueError, match="Setting 'max_calls' is not supported in"):
        ray.remote(f).options(max_calls=1)
    with pytest.raises(ValueError, match="Setting 'concurrency_groups' is not supported"):
        ray.remote(A).options(concurrency_groups={"io": 2})
    with pytest.raises(TypeError, match="name must be a string"):
        ray.remote(A).options(name=1)
    with pytest.raises(ValueError, match="name cannot be an empty string"):
        ray.remote(A).options(name="")
    with pytest.raises(ValueError, match="namespace cannot be an empty string"):
        ray.remote(A).options(name="a", namespace="")
    with pytest.raises(ValueError, match="must be specified to use `get_if_exists`"):
        ray.remote(A).options(get_if_exists=True)
    with pytest.raises(TypeError, match="@remote decorator must be applied"):
        ray.remote()


# -- on a cluster -------------------------------------------------------------------------

@ray.remote
def identity(x):
    return x


@ray.remote
def explode():
    raise KeyError("missing")


@ray.remote
def read_through(refs):
    return ray.get(refs[0])


@ray.remote
class Counter:
    step = 10

    def __init__(self, start=0):
        self.value = start
        self.add = "an instance attribute named like a method"

    def add(self, n):
        self.value += n
        return self.value

    @classmethod
    def default_step(cls):
        return cls.step

    @staticmethod
    def double(x):
        return 2 * x

    def me(self):
        return ray.get_runtime_context().current_actor

    def name(self):
        return ray.get_runtime_context().get_actor_name()

    def leave(self):
        ray.actor.exit_actor()


def test_init_takes_local_mode_false_and_a_job_config(fresh_cluster, tmp_path):
    (tmp_path / "shipped_helper.py").write_text("ANSWER = 42\n")
    config = JobConfig(code_search_path=[str(tmp_path)], ray_namespace="jobs-ns")
    fresh_cluster(local_mode=False, job_config=config)
    assert ray.get_runtime_context().namespace == "jobs-ns"

    @ray.remote
    def answer():
        import shipped_helper

        return shipped_helper.ANSWER

    assert ray.get(answer.remote(), timeout=30) == 42


def test_init_works_as_a_context_manager(fresh_cluster):
    with fresh_cluster(num_cpus=1):
        assert ray.get(identity.remote(1), timeout=30) == 1
    assert not ray.is_initialized()
    assert ray.ObjectID is ray.ObjectRef


def test_builtin_actor_methods(cluster):
    actor = Counter.remote(3)
    assert ray.get(actor.__ray_ready__.remote(), timeout=30) is True
    assert ray.get(actor.__ray_call__.remote(lambda self, k: self.value * k, 2)) == 6
    assert ray.get(actor.__ray_call__.remote(lambda self, k: self.value * k, k=3)) == 9
    with pytest.raises(TypeError):
        actor.__ray_ready__()
    assert {"__ray_ready__", "__ray_call__", "__ray_terminate__"} <= set(dir(actor))
    assert [n for n in dir(actor) if not n.startswith("_")] == [
        "add", "default_step", "double", "leave", "me", "name"]


def test_an_instance_attribute_does_not_hide_a_method(cluster):
    actor = Counter.remote(1)
    assert ray.get(actor.add.remote(2), timeout=30) == 3


def test_actor_class_keeps_class_attributes_and_methods(cluster):
    assert Counter.step == 10
    assert Counter.default_step() == 10
    assert Counter.double(4) == 8
    assert {"add", "double", "step", "options", "remote"} <= set(dir(Counter))
    actor = Counter.remote()
    assert ray.get([actor.default_step.remote(), actor.double.remote(5)], timeout=30) == [10, 10]


def test_wrong_arguments_fail_at_remote(cluster):
    with pytest.raises(TypeError, match="identity.remote"):
        identity.remote()
    with pytest.raises(TypeError, match="Counter.remote"):
        Counter.remote(1, 2)
    actor = Counter.remote()
    with pytest.raises(TypeError, match="Counter.add.remote"):
        actor.add.remote(1, 2)
    with pytest.raises(TypeError, match="missing a required argument"):
        actor.add.remote(m=1)

    @ray.remote
    def call_with_too_many(handle):
        try:
            handle.add.remote(1, 2)
        except TypeError:
            return "checked"
        return "not checked"

    assert ray.get(call_with_too_many.remote(actor), timeout=30) == "checked"  # a passed handle


def test_exit_actor_fails_its_call_and_the_queued_ones_and_runs_atexit(cluster, tmp_path):
    marker = tmp_path / "atexit-ran"

    @ray.remote
    class Leaver:
        def __init__(self, path):
            import atexit

            atexit.register(lambda: open(path, "w").close())

        def leave(self):
            ray.actor.exit_actor()

        def ping(self):
            return "pong"

    actor = Leaver.remote(str(marker))
    left, after = actor.leave.remote(), actor.ping.remote()
    for ref in (left, after):
        with pytest.raises(exceptions.RayActorError, match="exit_actor"):
            ray.get(ref, timeout=30)
    wait_until(marker.exists, timeout=15, message="the actor's atexit handler")


def test_ray_terminate_runs_after_the_calls_before_it(cluster):
    actor = Counter.remote()
    first = actor.add.remote(5)
    ray.wait([actor.__ray_terminate__.remote()], timeout=30)
    assert ray.get(first, timeout=30) == 5
    with pytest.raises(exceptions.RayActorError):
        ray.get(actor.add.remote(1), timeout=30)


def test_exit_actor_outside_an_actor_is_a_type_error(cluster):
    @ray.remote
    def not_an_actor():
        ray.actor.exit_actor()

    with pytest.raises(TypeError, match="non-actor"):
        ray.get(not_an_actor.remote(), timeout=30)


def test_an_error_raised_on_through_get_keeps_the_users_type(cluster):
    with pytest.raises(KeyError) as info:
        ray.get(read_through.remote([explode.remote()]), timeout=30)
    assert isinstance(info.value, exceptions.RayTaskError)
    assert "read_through" in info.value.function_name


def test_object_ref_futures(cluster):
    ref = identity.remote(7)

    async def wait_for_it():
        return await ref.as_future()

    assert asyncio.run(wait_for_it()) == 7
    seen = []
    identity.remote(8)._on_completed(seen.append)
    wait_until(lambda: seen == [8], timeout=30, message="the completion callback")
    plain = ray.ObjectRef(ref.binary())
    assert plain == ref and plain.hex() == ref.hex()


def test_task_names_in_the_state_api_are_rays(cluster):
    @ray.remote
    def local_task():
        return 1

    actor = Counter.remote()
    ray.get([local_task.remote(), actor.add.remote(1)], timeout=30)
    names = {t["name"] for t in list_tasks()}
    assert {"local_task", "Counter.add"} <= names
    assert not [n for n in names if "<locals>" in n]


def test_named_actors_are_listed_and_kill_frees_the_name(cluster):
    actor = Counter.options(name="listed", lifetime="detached").remote()
    ray.get(actor.__ray_ready__.remote(), timeout=30)
    assert "listed" in ray.util.list_named_actors()
    assert {"name": "listed", "namespace": ""} in ray.util.list_named_actors(
        all_namespaces=True)
    ray.kill(actor)
    assert "listed" not in ray.util.list_named_actors()
    again = Counter.options(name="listed").remote()  # the name is free at once
    assert ray.get(again.add.remote(1), timeout=30) == 1
    ray.kill(again)


def test_runtime_context_of_an_actor(cluster):
    actor = Counter.options(name="self-aware").remote()
    me = ray.get(actor.me.remote(), timeout=30)
    assert me == actor
    assert ray.get(me.add.remote(2), timeout=30) == 2
    assert ray.get(actor.name.remote(), timeout=30) == "self-aware"
    with pytest.raises(RuntimeError, match="only available in an actor"):
        ray.get_runtime_context().current_actor  # noqa: B018


def test_decorator_only_options_are_accepted(cluster):
    @ray.remote(max_calls=1)
    def once():
        return os.getpid()

    @ray.remote(concurrency_groups={"io": 2})
    class Grouped:
        @ray.method(concurrency_group="io")
        def ping(self):
            return "pong"

    assert isinstance(ray.get(once.remote(), timeout=30), int)
    assert ray.get(Grouped.remote().ping.remote(), timeout=30) == "pong"


def test_workers_import_from_the_driver_scripts_folder(tmp_path):
    (tmp_path / "next_to_the_script.py").write_text("def greet():\n    return 'hello'\n")
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent("""
        import cellfleet as ray
        import next_to_the_script

        @ray.remote
        def call():
            return next_to_the_script.greet()

        ray.init(num_cpus=1)
        print(ray.get(call.remote(), timeout=60))
        ray.shutdown()
    """))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, env=env, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["hello"]
