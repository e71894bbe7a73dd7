"""Ray core tutorial patterns, unchanged, through ``import cellfleet as ray``.

In the style of Ray's own core tests (python/ray/tests/test_basic.py, test_actor.py): remote
functions and their options, chained refs, ``ray.wait`` loops, actors with state, handles
passed around, numpy arrays through the object store, nested tasks and exceptions. The last
section pins the differences from Ray that docs/ray-compatibility.md lists.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import string
import subprocess
import sys

import cloudpickle
import numpy as np
import pytest
from gates import touch, wait_for_file

import cellfleet as ray

pytestmark = pytest.mark.integration

# Workers cannot import this test module: ship its helpers by value with the functions.
cloudpickle.register_pickle_by_value(sys.modules[__name__])






@ray.remote
def identity(x):
    return x


Point = collections.namedtuple("Point", ["x", "y"])


@dataclasses.dataclass
class Record:
    name: str
    values: list


class Foo:
    def __init__(self, value=0):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Foo) and other.value == self.value

    def __hash__(self):
        return hash(self.value)


# -- remote functions -----------------------------------------------------------------------


def test_simple_serialization(cluster):
    values = [
        0, 0.0, 0.9, 1 << 62, 1 << 100, "a", string.printable, "\u262f", None, True, False,
        [], (), {}, set(), frozenset({1, 2}), b"bytes", bytearray(b"mutable"), type, int,
        collections.Counter("hello"), collections.OrderedDict([("a", 1), ("b", 2)]),
        collections.defaultdict(int, {"x": 1}), collections.deque([1, "a", 3.5]),
        np.int8(3), np.int64(5), np.uint32(4), np.float32(1.9), np.float64(1.9),
        Point(11, y=22), Record("r", [1, 2]), Foo(7), complex(1, 2), range(3),
    ]
    for value in values:
        for got in (ray.get(identity.remote(value), timeout=20), ray.get(ray.put(value))):
            assert got == value
            assert type(got) is type(value)


def test_complex_serialization(cluster):
    values = [
        [[[[[[[[[[]]]]]]]]]],
        {f"obj{i}": np.random.normal(size=[10, 10]) for i in range(5)},
        {"a": {"b": {"c": {"d": {}}}}},
        (((((((((),),),),),),),),),
        {Foo(1): Foo(2)},
        [np.zeros([100, 100]), np.array(["hi", 3], dtype=object)],
        ValueError("an exception as a value"),
    ]
    for value in values:
        got = ray.get(identity.remote(value), timeout=20)
        if isinstance(value, dict) and value and isinstance(next(iter(value.values())),
                                                            np.ndarray):
            assert value.keys() == got.keys()
            for key in value:
                np.testing.assert_array_equal(value[key], got[key])
        elif isinstance(value, list) and value and isinstance(value[0], np.ndarray):
            for a, b in zip(value, got):
                np.testing.assert_array_equal(a, b)
        elif isinstance(value, Exception):
            assert type(got) is ValueError and got.args == value.args
        else:
            assert got == value


def test_passing_arguments_by_value_out_of_the_box(cluster):
    def helper():
        return 1

    assert ray.get(identity.remote(helper), timeout=20)() == 1
    assert ray.get(identity.remote(lambda x: x + 1), timeout=20)(3) == 4
    assert ray.get(identity.remote({1, (1, 2, "hi")}), timeout=20) == {1, (1, 2, "hi")}
    assert ray.get(identity.remote(str), timeout=20) is str

    class Local:
        pass

    assert ray.get(ray.put(Local)).__name__ == "Local"


def test_put_get(cluster):
    for i in range(50):
        for value in (i * 10**6, i * 10**6 * 1.0, "h" * i, [1] * i):
            assert ray.get(ray.put(value)) == value


def test_remote_function_forms_and_options(cluster):
    def plain(x, y=1):
        return x + y

    f = ray.remote(plain)
    g = ray.remote(num_cpus=1, max_retries=0)(plain)
    assert ray.get([f.remote(1), g.remote(1, y=2), f.options(name="renamed").remote(5)],
                   timeout=20) == [2, 3, 6]
    with pytest.raises(TypeError, match=r"\.remote\("):
        f(1)
    with pytest.raises(ValueError):
        f.options(not_an_option=1)
    with pytest.raises(ValueError):
        ray.remote(num_cpus=-1)(plain)

    @ray.remote(num_returns=3)
    def three():
        return 1, 2, 3

    @ray.remote
    def nothing():
        return None

    refs = three.remote()
    assert isinstance(refs, list) and len(refs) == 3
    assert ray.get(refs, timeout=20) == [1, 2, 3]
    two = ray.remote(num_returns=2)(lambda: ("x", "y"))
    assert ray.get(two.remote(), timeout=20) == ["x", "y"]
    assert nothing.options(num_returns=0).remote() is None
    assert ray.get(nothing.remote(), timeout=20) is None


def test_keyword_and_variable_arguments(cluster):
    @ray.remote
    def f(a, b=2, *args, c=3, **kwargs):
        return a, b, args, c, kwargs

    assert ray.get(f.remote(1), timeout=20) == (1, 2, (), 3, {})
    assert ray.get(f.remote(1, 5, 6, 7, c=8, d=9), timeout=20) == (1, 5, (6, 7), 8, {"d": 9})
    with pytest.raises(TypeError):  # a wrong call fails when the task runs, as in Ray
        ray.get(f.remote(), timeout=20)


def test_chained_refs_are_resolved_at_the_top_level_only(cluster):
    @ray.remote
    def add(x, y):
        return x + y

    @ray.remote
    def kinds(values):
        return [type(v).__name__ for v in values]

    ref = ray.put(1)
    for _ in range(10):
        ref = add.remote(ref, 1)
    assert ray.get(ref, timeout=20) == 11
    total = add.remote(add.remote(1, 2), y=add.remote(3, 4))  # keyword refs resolve too
    assert ray.get(total, timeout=20) == 10
    # Refs inside containers arrive as refs: the task decides when to get them.
    assert ray.get(kinds.remote([ray.put(1), 2]), timeout=20) == ["ObjectRef", "int"]
    inner = ray.get(identity.remote({"ref": ray.put("deep")}), timeout=20)["ref"]
    assert ray.get(inner, timeout=20) == "deep"


def test_get_list_duplicates_and_errors(cluster):
    ref = ray.put("same")
    assert ray.get([ref, ref, identity.remote(ref)], timeout=20) == ["same"] * 3
    assert ray.get([]) == []
    with pytest.raises(ValueError):
        ray.get(["not a ref"])
    with pytest.raises(ValueError):
        ray.get(5)


def test_wait_loop_processes_results_as_they_finish(cluster, tmp_path):
    @ray.remote(num_cpus=0)  # all four run at once on the 2-CPU cluster
    def gated(i, gate):
        wait_for_file(gate)
        return i

    gates = [str(tmp_path / f"gate{i}") for i in range(4)]
    pending = [gated.remote(i, gate) for i, gate in enumerate(gates)]
    ready, not_ready = ray.wait(pending, timeout=0)
    assert ready == [] and not_ready == pending
    finished = []
    for gate in reversed(gates):  # open the gates last-first: results follow the gates
        touch(gate)
        ready, pending = ray.wait(pending, num_returns=1, timeout=20)
        assert len(ready) == 1
        finished.append(ray.get(ready[0]))
    assert finished == [3, 2, 1, 0] and pending == []

    refs = [identity.remote(i) for i in range(6)]
    ready, not_ready = ray.wait(refs, num_returns=6, timeout=20, fetch_local=True)
    assert ready == refs and not_ready == []  # ready refs keep their input order
    with pytest.raises(ValueError):
        ray.wait([refs[0], refs[0]])
    with pytest.raises(ValueError):
        ray.wait(refs, num_returns=7)
    with pytest.raises(TypeError):
        ray.wait(refs[0])


def test_get_timeout(cluster, tmp_path):
    @ray.remote
    def blocked(gate):
        wait_for_file(gate)
        return "done"

    gate = str(tmp_path / "gate")
    ref = blocked.remote(gate)
    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(ref, timeout=0.05)
    with pytest.raises(TimeoutError):  # GetTimeoutError is a TimeoutError, as in Ray
        ray.get(ref, timeout=0)
    touch(gate)
    assert ray.get(ref, timeout=20) == "done"


def test_object_ref_futures_and_await(cluster):
    ref = identity.remote(41)
    assert ref.future().result(timeout=20) == 41

    async def main():
        return await identity.remote(1) + await ray.put(2)

    assert asyncio.run(main()) == 3
    assert isinstance(ref.hex(), str) and ref == ref and len({ref, ref}) == 1


def test_nested_tasks(cluster):
    @ray.remote
    def fib(n):
        if n < 2:
            return n
        return sum(ray.get([fib.remote(n - 1), fib.remote(n - 2)]))

    assert ray.get(fib.remote(5), timeout=60) == 5

    def helper_defined_later():
        return 1

    @ray.remote
    def outer():
        return helper_defined_later() + ray.get(inner.remote())

    @ray.remote
    def inner():
        return 2

    assert ray.get(outer.remote(), timeout=20) == 3

    @ray.remote
    def submit_only(n):
        return [identity.remote(i) for i in range(n)]  # refs owned by the task's worker

    assert ray.get(ray.get(submit_only.remote(3), timeout=20), timeout=20) == [0, 1, 2]


# -- numpy and the object store ------------------------------------------------------------


def test_put_large_numpy_arrays(cluster):
    @ray.remote
    def total(array):
        return float(array.sum()), array.shape, array.dtype.str

    @ray.remote
    def make(n):
        return np.arange(n, dtype=np.float64)

    array = np.arange(4 * 10**6, dtype=np.float64)  # 32 MB
    ref = ray.put(array)
    got = ray.get(ref)
    np.testing.assert_array_equal(got, array)
    assert not got.flags.writeable  # zero-copy from the object store, read-only as in Ray
    with pytest.raises(ValueError):
        got[0] = 1.0
    expected = (float(array.sum()), array.shape, array.dtype.str)
    assert ray.get(total.remote(ref), timeout=30) == expected
    assert ray.get(total.remote(array), timeout=30) == expected  # big argument by value
    made = ray.get(make.remote(10**6), timeout=30)  # a big return value
    assert made.shape == (10**6,) and made[-1] == 10**6 - 1
    matrix = np.random.default_rng(0).normal(size=(500, 500))
    np.testing.assert_array_equal(ray.get(ray.put([matrix, {"m": matrix}]))[1]["m"], matrix)
    del got


# -- actors ---------------------------------------------------------------------------------


def test_actor_counter_tutorial(cluster):
    @ray.remote
    class Counter:
        def __init__(self, start=0):
            self.value = start

        def increment(self):
            self.value += 1
            return self.value

        def get_counter(self):
            return self.value

    counters = [Counter.remote() for _ in range(3)]
    for _ in range(5):
        ray.get([c.increment.remote() for c in counters], timeout=20)
    assert ray.get([c.get_counter.remote() for c in counters], timeout=20) == [5, 5, 5]
    first = Counter.remote(10)
    assert ray.get([first.increment.remote() for _ in range(5)], timeout=20) == [
        11, 12, 13, 14, 15]
    with pytest.raises(TypeError, match=r"\.remote\(\)"):
        Counter()
    with pytest.raises(TypeError):
        first.increment()
    with pytest.raises(AttributeError):
        first.no_such_method  # noqa: B018


def test_actor_arguments_and_classes(cluster):
    @ray.remote
    class Actor:
        def __init__(self, arg0, arg1=1, *args, arg2="a"):
            self.arg0, self.arg1, self.args, self.arg2 = arg0, arg1, args, arg2

        def get_values(self, arg0, arg1=2, arg2="b"):
            return self.arg0 + arg0, self.arg1 + arg1, self.arg2 + arg2, self.args

    actor = Actor.remote(0)
    assert ray.get(actor.get_values.remote(1), timeout=20) == (1, 3, "ab", ())
    actor = Actor.remote(1, 2, "x", "y", arg2="c")
    assert ray.get(actor.get_values.remote(2, 3, "d"), timeout=20) == (3, 5, "cd", ("x", "y"))
    actor = Actor.remote(1)
    with pytest.raises(TypeError):
        ray.get(actor.get_values.remote(), timeout=20)

    @ray.remote
    class NoConstructor:
        def get(self):
            return None

    assert ray.get(NoConstructor.remote().get.remote(), timeout=20) is None

    class Base:
        BASE = 2

        @staticmethod
        def static():
            return 1

    @ray.remote
    class Derived(Base):
        X = 3

        @classmethod
        def from_class(cls):
            return cls.X

        def values(self, foo):
            return self.BASE, self.static(), self.from_class(), foo

    derived = Derived.remote()
    assert ray.get(derived.values.remote(Foo(4)), timeout=20) == (2, 1, 3, Foo(4))
    assert ray.get(derived.static.remote(), timeout=20) == 1


def test_actor_method_returns(cluster):
    @ray.remote
    class Splitter:
        @ray.method(num_returns=2)
        def split(self, text):
            head, _, tail = text.partition(" ")
            return head, tail

        def pair(self):
            return 1, 2

    actor = Splitter.remote()
    head, tail = actor.split.remote("hello big world")
    assert ray.get([head, tail], timeout=20) == ["hello", "big world"]
    one, two = actor.pair.options(num_returns=2).remote()
    assert ray.get([one, two], timeout=20) == [1, 2]
    assert ray.get(actor.pair.remote(), timeout=20) == (1, 2)


def test_actor_handles_in_tasks_and_refs_in_actors(cluster):
    @ray.remote
    def add_one(x):
        return x + 1

    @ray.remote
    class Actor:
        def __init__(self, x):
            self.x = x
            self.refs = [add_one.remote(i) for i in range(5)]  # tasks from the constructor

        def get_values(self):
            return self.x, self.refs

        def resolve(self, refs):
            return ray.get(refs)

        def inc(self):
            self.x += 1
            return self.x

    @ray.remote
    def use(actor, n):
        return ray.get([actor.inc.remote() for _ in range(n)])[-1]

    actor = Actor.remote(ray.put(10))  # a ref argument to a constructor is resolved
    x, refs = ray.get(actor.get_values.remote(), timeout=20)
    assert x == 10 and ray.get(refs, timeout=20) == [1, 2, 3, 4, 5]
    assert ray.get(actor.resolve.remote([add_one.remote(i) for i in range(3)]),
                   timeout=20) == [1, 2, 3]
    ray.get([use.remote(actor, 5) for _ in range(2)], timeout=30)
    assert ray.get(actor.inc.remote(), timeout=20) == 21


def test_define_and_use_actors_within_tasks_and_actors(cluster):
    @ray.remote
    def make_and_use(x, n):
        @ray.remote
        class Inner:
            def __init__(self, x):
                self.x = x

            def get(self):
                return self.x

        actor = Inner.remote(x)
        return ray.get([actor.get.remote() for _ in range(n)])

    assert ray.get([make_and_use.remote(i, 3) for i in range(3)], timeout=30) == [
        [i] * 3 for i in range(3)]

    @ray.remote
    class Leaf:
        def __init__(self, y):
            self.y = y

        def get(self):
            return self.y

    @ray.remote
    class Owner:
        def __init__(self, x, y):
            self.x = x
            self.leaf = Leaf.remote(y)

        def values(self):
            return self.x, ray.get(self.leaf.get.remote())

    assert ray.get(Owner.remote(3, 4).values.remote(), timeout=20) == (3, 4)


def test_named_actor_tutorial(cluster):
    @ray.remote
    class Store:
        def __init__(self):
            self.data = {}

        def set(self, key, value):
            self.data[key] = value

        def get(self, key):
            return self.data.get(key)

    store = Store.options(name="global_store").remote()

    @ray.remote
    def writer(key, value):
        ray.get(ray.get_actor("global_store").set.remote(key, value))

    ray.get([writer.remote(k, v) for k, v in (("a", 1), ("b", 2))], timeout=30)
    assert ray.get([store.get.remote("a"), store.get.remote("b")], timeout=20) == [1, 2]
    again = Store.options(name="global_store", get_if_exists=True).remote()
    assert ray.get(again.get.remote("a"), timeout=20) == 1
    ray.kill(store)


def test_async_actor_tutorial(cluster):
    @ray.remote
    class AsyncActor:
        def __init__(self):
            self.inside = 0
            self.all_in = asyncio.Event()

        async def run_concurrent(self, n):
            self.inside += 1
            if self.inside == n:
                self.all_in.set()
            await asyncio.wait_for(self.all_in.wait(), 30)
            return "done"

    actor = AsyncActor.remote()
    assert ray.get([actor.run_concurrent.remote(5) for _ in range(5)], timeout=30) == [
        "done"] * 5


def test_parameter_server_tutorial(cluster):
    @ray.remote
    class ParameterServer:
        def __init__(self, dim):
            self.params = np.zeros(dim)

        def get_params(self):
            return self.params  # the stored object is a copy: later updates don't leak in

        def apply_gradients(self, *gradients):
            self.params += np.sum(gradients, axis=0)
            return self.params

    @ray.remote
    def train(ps, steps):
        for _ in range(steps):
            params = ray.get(ps.get_params.remote())
            ray.get(ps.apply_gradients.remote(np.ones_like(params)))
        return steps

    dim = 200_000  # 1.6 MB: travels through shared memory, not inline
    ps = ParameterServer.remote(dim)
    before = ray.get(ps.get_params.remote(), timeout=20)
    assert ray.get([train.remote(ps, 5) for _ in range(2)], timeout=60) == [5, 5]
    grads = [ray.put(np.full(dim, 2.0)) for _ in range(3)]  # refs as varargs resolve
    after = ray.get(ps.apply_gradients.remote(*grads), timeout=20)
    assert np.all(after == 16.0)
    assert np.all(before == 0.0)  # unchanged by the actor's in-place updates


def test_actor_pool_tutorial(cluster):
    from cellfleet.util import ActorPool  # ray.util.ActorPool

    @ray.remote
    class Squarer:
        def square(self, x):
            return x * x

    pool = ActorPool([Squarer.remote(), Squarer.remote()])
    assert list(pool.map(lambda actor, v: actor.square.remote(v), range(8))) == [
        v * v for v in range(8)]
    assert sorted(pool.map_unordered(lambda actor, v: actor.square.remote(v), range(8))) == [
        v * v for v in range(8)]


# -- exceptions -------------------------------------------------------------------------------


class CustomError(Exception):
    def __init__(self, code):
        super().__init__(f"code {code}")
        self.code = code


def test_task_exceptions(cluster):
    @ray.remote
    def fail(code):
        raise CustomError(code)

    @ray.remote
    def downstream(x):
        return x + 1

    with pytest.raises(CustomError) as info:
        ray.get(fail.remote(3), timeout=20)
    error = info.value
    assert isinstance(error, ray.exceptions.RayTaskError)
    assert isinstance(error, ray.exceptions.RayError)
    assert error.code == 3 and "code 3" in str(error)
    assert "fail" in str(error) and "Traceback" in str(error)
    assert isinstance(error.cause, CustomError)

    with pytest.raises(CustomError):  # the failure travels to the tasks that depend on it
        ray.get(downstream.remote(downstream.remote(fail.remote(4))), timeout=20)
    with pytest.raises(ray.exceptions.RayTaskError):
        ray.get([identity.remote(1), fail.remote(5)], timeout=20)

    @ray.remote
    def zero_division():
        return 1 / 0

    with pytest.raises(ZeroDivisionError):
        ray.get(zero_division.remote(), timeout=20)

    try:
        ray.get(zero_division.remote(), timeout=20)
    except ray.exceptions.RayTaskError as exc:  # Ray's spelling catches it too
        assert "ZeroDivisionError" in str(exc)


def test_actor_exceptions(cluster):
    @ray.remote
    class Flaky:
        def __init__(self, fail=False):
            if fail:
                raise Exception("oops in init")

        def ok(self):
            return "OK"

        def bad(self):
            raise CustomError(7)

    healthy = Flaky.remote()
    with pytest.raises(CustomError):
        ray.get(healthy.bad.remote(), timeout=20)
    assert ray.get(healthy.ok.remote(), timeout=20) == "OK"

    broken = Flaky.remote(fail=True)
    with pytest.raises(ray.exceptions.RayActorError, match="oops in init"):
        ray.get(broken.ok.remote(), timeout=20)

    ray.kill(healthy)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(healthy.ok.remote(), timeout=20)


def test_exception_hierarchy():
    exc = ray.exceptions
    assert issubclass(exc.ActorDiedError, exc.RayActorError)
    assert issubclass(exc.RayActorError, exc.RayError)
    assert issubclass(exc.TaskCancelledError, exc.RayError)
    assert issubclass(exc.GetTimeoutError, TimeoutError)
    assert issubclass(exc.ObjectLostError, exc.RayError)
    assert issubclass(exc.OwnerDiedError, exc.ObjectLostError)
    assert issubclass(exc.WorkerCrashedError, exc.RayError)


def test_init_and_runtime_state(cluster):
    assert ray.is_initialized()
    info = ray.init(ignore_reinit_error=True)
    assert info["address"] == cluster["address"]
    with pytest.raises(RuntimeError, match="ray.init twice"):
        ray.init()
    assert ray.cluster_resources()["CPU"] == 2
    assert ray.nodes()[0]["Alive"]


# -- documented differences (docs/ray-compatibility.md) -------------------------------------


def test_work_that_fits_no_node_stays_pending(cluster):
    @ray.remote(num_cpus=64)
    def too_big():
        return 1

    @ray.remote(resources={"TPU": 1})
    class OnTpu:
        def method(self):
            pass

    actor = OnTpu.remote()
    ready, _ = ray.wait([too_big.remote(), actor.method.remote()], num_returns=2, timeout=0.5)
    assert ready == []


OTHER_JOB = """
import sys
import cellfleet as ray

ray.init(address=sys.argv[1])  # no namespace given


@ray.remote
class Greeter:
    def hello(self):
        return "hello from another job"


greeter = Greeter.options(name="greeter", lifetime="detached").remote()
ray.get(greeter.hello.remote())
"""


def test_difference_the_default_namespace_is_shared_by_jobs(cluster):
    done = subprocess.run([sys.executable, "-c", OTHER_JOB, cluster["gcs_address"]],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    greeter = ray.get_actor("greeter")  # Ray: another job's anonymous namespace, not found
    assert ray.get(greeter.hello.remote(), timeout=20) == "hello from another job"
    assert ray.get_runtime_context().namespace == ""
    ray.kill(greeter)


def test_difference_gpu_ids_without_gpus(cluster):
    @ray.remote
    def gpu_ids():
        return ray.get_gpu_ids()

    assert ray.get(gpu_ids.remote(), timeout=20) == [] and ray.get_gpu_ids() == []
