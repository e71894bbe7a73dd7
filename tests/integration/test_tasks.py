"""Task semantics against a real local cluster: options, arguments, returns, nested tasks."""

from __future__ import annotations

import os
import sys
import time

import cloudpickle
import pytest
from gates import touch, wait_for_file
from helpers import wait_until

import cellfleet as ray
from cellfleet import exceptions
from cellfleet.remote_function import RemoteFunction

pytestmark = pytest.mark.integration

# Workers cannot import this test module: ship its helpers by value with the functions.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

GATE_TIMEOUT_S = 30.0






@ray.remote
def add(x, y=10):
    return x + y


@ray.remote(num_cpus=1, max_retries=0)
def add_with_options(x, y=10):
    return x + y


@ray.remote
def gated(gate: str, value, started: str | None = None):
    if started:
        touch(started)
    wait_for_file(gate)
    return {"value": value, "end": time.time()}


@ray.remote
def describe(*args, **kwargs):
    """What the task received: types (is it an ObjectRef?) and values of refs' targets."""

    def kind(v):
        return "ref" if isinstance(v, ray.ObjectRef) else type(v).__name__

    return {
        "args": [kind(a) for a in args],
        "kwargs": {k: kind(v) for k, v in kwargs.items()},
        "start": time.time(),
    }


# -- remote and options -----------------------------------------------------------------


def test_remote_with_and_without_decorator_arguments(cluster):
    assert isinstance(add, RemoteFunction)
    assert isinstance(add_with_options, RemoteFunction)
    ref = add.remote(1)
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref, timeout=20) == 11
    assert ray.get(add_with_options.remote(1, 2), timeout=20) == 3


def test_kwargs_and_defaults(cluster):
    assert ray.get(add.remote(1, y=5), timeout=20) == 6
    assert ray.get(add.remote(x=2, y=3), timeout=20) == 5
    assert ray.get(add.remote(y=-1, x=1), timeout=20) == 0
    # A wrong call signature fails inside the task, as a TypeError at get.
    with pytest.raises(TypeError):
        ray.get(add.remote(1, 2, 3), timeout=20)


def test_options_returns_a_copy(cluster):
    two = add.options(num_returns=1, name="adder")
    assert two is not add
    assert ray.get(two.remote(1), timeout=20) == 11

    @ray.remote
    def pair():
        return "a", "b"

    split = pair.options(num_returns=2)
    refs = split.remote()
    assert isinstance(refs, list) and len(refs) == 2
    # The original keeps its own options; options stack.
    whole = pair.remote()
    assert isinstance(whole, ray.ObjectRef)
    assert ray.get(whole, timeout=20) == ("a", "b")
    assert ray.get(refs, timeout=20) == ["a", "b"]
    stacked = split.options(name="renamed").remote()
    assert ray.get(stacked, timeout=20) == ["a", "b"]


def test_num_returns_k_gives_k_refs(cluster):
    @ray.remote(num_returns=3)
    def three(x):
        return x, x * 2, [x]

    refs = three.remote(4)
    assert isinstance(refs, list) and len(refs) == 3
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    assert len({r.binary() for r in refs}) == 3
    assert ray.get(refs, timeout=20) == [4, 8, [4]]
    # Each return can be fetched on its own.
    assert ray.get(refs[2], timeout=20) == [4]


@pytest.mark.parametrize("value, detail", [
    ((1, 2, 3), "tuple of length 3"),
    ([1], "list of length 1"),
    (7, "int"),
])
def test_num_returns_mismatch_fails_at_get(cluster, value, detail):
    @ray.remote(num_returns=2)
    def wrong(v):
        return v

    refs = wrong.remote(value)
    for ref in refs:
        with pytest.raises(exceptions.RayTaskError) as info:
            ray.get(ref, timeout=20)
        assert isinstance(info.value, ValueError)
        message = str(info.value)
        assert "num_returns=2" in message and detail in message
        assert "wrong()" in message


def test_num_returns_zero_returns_none_and_runs(cluster, tmp_path):
    marker = str(tmp_path / "ran")

    @ray.remote(num_returns=0)
    def side_effect(path):
        touch(path)

    assert side_effect.remote(marker) is None
    wait_until(lambda: os.path.exists(marker), message="the num_returns=0 task to run")


def test_num_returns_zero_task_is_not_retried(cluster, tmp_path):
    log = str(tmp_path / "attempts")

    @ray.remote(num_returns=0, retry_exceptions=True, max_retries=2)
    def side_effect(path):
        with open(path, "a") as f:
            f.write("run\n")

    def runs() -> int:
        if not os.path.exists(log):
            return 0
        with open(log) as f:
            return f.read().count("run")

    side_effect.remote(log)
    wait_until(lambda: runs() >= 1, message="the first attempt")
    # The task succeeded: nothing may run it again. A retry follows within milliseconds,
    # so a short window shows it.
    with pytest.raises(AssertionError, match="timed out"):
        wait_until(lambda: runs() > 1, timeout=1.5, message="a second run")


def test_name_option_names_the_task(cluster):
    @ray.remote
    def anonymous():
        raise ValueError("named failure")

    with pytest.raises(ValueError) as info:
        ray.get(anonymous.options(name="my-custom-name").remote(), timeout=20)
    assert info.value.function_name == "my-custom-name"
    assert "ray::my-custom-name()" in str(info.value)


def test_num_cpus_whole_node_runs_alone(cluster, tmp_path):
    gate, started_a, started_b = (str(tmp_path / n) for n in ("gate", "a", "b"))
    big = gated.options(num_cpus=2)
    a = big.remote(gate, "a", started_a)
    try:
        wait_until(lambda: os.path.exists(started_a), timeout=20, message="task a to start")
        b = big.remote(gate, "b", started_b)
        ready, not_ready = ray.wait([b], timeout=0.5)
        assert ready == [] and not_ready == [b]
        assert not os.path.exists(started_b), "two 2-CPU tasks ran at once on 2 CPUs"
    finally:
        touch(gate)
    assert ray.get(a, timeout=20)["value"] == "a"
    assert ray.get(b, timeout=20)["value"] == "b"


def test_one_cpu_tasks_run_concurrently_on_two_cpus(cluster, tmp_path):
    @ray.remote(num_cpus=1)
    def meet(mine: str, other: str):
        touch(mine)
        wait_for_file(other, timeout=20)
        return True

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert ray.get([meet.remote(a, b), meet.remote(b, a)], timeout=30) == [True, True]


def test_infeasible_tasks_wait_with_a_warning(cluster, caplog):
    # As in Ray: a task no node can run stays pending (until a node that fits joins).
    refs = [add.options(num_cpus=3).remote(1),
            add.options(resources={"accelerator": 1}).remote(1)]
    with pytest.raises(exceptions.GetTimeoutError):
        ray.get(refs, timeout=1)
    wait_until(lambda: "accelerator" in caplog.text, message="the infeasible warning")
    assert "cannot be scheduled yet" in caplog.text and "'CPU': 3.0" in caplog.text
    for ref in refs:
        ray.cancel(ref)
    # The cluster still runs ordinary tasks.
    assert ray.get(add.remote(1), timeout=20) == 11


# -- arguments --------------------------------------------------------------------------


def test_top_level_ref_args_are_resolved_before_the_task_runs(cluster, tmp_path):
    gate = str(tmp_path / "gate")

    @ray.remote
    def consume(produced, started):
        touch(started)
        return {"got": produced, "is_ref": isinstance(produced, ray.ObjectRef),
                "start": time.time()}

    started = str(tmp_path / "consumer-started")
    producer = gated.remote(gate, 41)
    consumer = consume.remote(producer, started)
    try:
        ready, _ = ray.wait([consumer], timeout=0.5)
        assert ready == []
        assert not os.path.exists(started), "the consumer ran before its argument was ready"
    finally:
        touch(gate)
    out = ray.get(consumer, timeout=20)
    wait_until(lambda: os.path.exists(started))
    assert out["is_ref"] is False
    assert out["got"]["value"] == 41
    assert out["start"] >= out["got"]["end"]


def test_tasks_waiting_for_arguments_hold_no_cpu(cluster, tmp_path):
    gate = str(tmp_path / "gate")

    @ray.remote
    def independent():  # never run before: nothing is pipelined behind the producer
        return "ran"

    producer = gated.remote(gate, 1)  # takes one of the two CPUs until the gate opens
    try:
        waiting = [describe.remote(producer, i) for i in range(3)]
        # The other CPU is free for independent work despite three waiting tasks.
        assert ray.get(independent.remote(), timeout=20) == "ran"
        ready, _ = ray.wait(waiting, timeout=0)
        assert ready == []
    finally:
        touch(gate)
    for out in ray.get(waiting, timeout=20):
        assert out["args"] == ["dict", "int"]


def test_short_task_does_not_queue_behind_a_running_task(cluster, tmp_path):
    gate, started = str(tmp_path / "gate"), str(tmp_path / "started")
    assert ray.get(add.remote(0), timeout=20) == 10  # add is now known to be short
    long_running = gated.remote(gate, "long", started)
    try:
        wait_until(lambda: os.path.exists(started), timeout=20, message="the long task")
        # One CPU is idle: a quick task must not wait for the gate.
        assert ray.get(add.remote(1), timeout=3) == 11
    finally:
        touch(gate)
        ray.get(long_running, timeout=20)


def test_ref_args_in_kwargs_are_resolved(cluster):
    x = ray.put(5)
    y = add.remote(1)
    assert ray.get(add.remote(x=x, y=y), timeout=20) == 16
    out = ray.get(describe.remote(x, key=y), timeout=20)
    assert out["args"] == ["int"] and out["kwargs"] == {"key": "int"}


def test_nested_refs_arrive_as_refs(cluster):
    inner = ray.put("payload")
    pending = add.remote(1)

    @ray.remote
    def inspect(items, mapping):
        refs = [items[0], items[1][0], mapping["k"]]
        return ([isinstance(r, ray.ObjectRef) for r in refs], ray.get(refs, timeout=20),
                refs[0] == items[0])

    flags, values, same = ray.get(inspect.remote([inner, [pending]], {"k": inner}), timeout=20)
    assert flags == [True, True, True]
    assert values == ["payload", 11, "payload"]
    assert same is True


def test_same_ref_twice_as_argument(cluster):
    r = add.remote(1)
    assert ray.get(add.remote(r, r), timeout=20) == 22


# -- dynamic task graphs ----------------------------------------------------------------


@ray.remote
def fib(n):
    if n < 2:
        return n
    return sum(ray.get([fib.remote(n - 1), fib.remote(n - 2)], timeout=60))


def test_recursive_tasks_do_not_deadlock(cluster):
    # Blocked parents give their CPU back, or this would hang on 2 CPUs.
    assert ray.get(fib.remote(5), timeout=60) == 5


def test_task_returns_ref_of_its_own_subtask(cluster):
    @ray.remote
    def inner(x):
        return x * 3

    @ray.remote
    def outer(x):
        return inner.remote(x)  # returned unresolved: the driver gets the ref itself

    ref = ray.get(outer.remote(2), timeout=20)
    assert isinstance(ref, ray.ObjectRef)
    assert ref.owner_address() != ray._context.core.address  # the worker owns it
    assert ray.get(ref, timeout=20) == 6


def test_task_can_call_a_remote_function_the_driver_already_used(cluster):
    """Regression: a used RemoteFunction pickled its CoreWorker ("cannot pickle mmap")."""
    @ray.remote
    def inner(x):
        return x + 1

    assert ray.get(inner.remote(1), timeout=20) == 2

    @ray.remote
    def outer(x):
        return ray.get(inner.remote(x), timeout=20)

    assert ray.get(outer.remote(1), timeout=20) == 2


def test_many_small_tasks_keep_their_order(cluster):
    @ray.remote
    def square(i):
        return i * i

    refs = [square.remote(i) for i in range(300)]
    assert ray.get(refs, timeout=60) == [i * i for i in range(300)]
