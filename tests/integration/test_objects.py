"""Objects against a real local cluster: get/wait/put, shared memory, reference counting."""

from __future__ import annotations

import builtins
import dataclasses
import os
import sys
import threading
import time
from collections.abc import Iterator

import cloudpickle
import numpy as np
import pytest
from gates import touch, wait_for_file
from helpers import wait_until

import cellfleet as ray
from cellfleet import _messages, exceptions

pytestmark = pytest.mark.integration

# Workers cannot import this test module: ship its helpers by value with the functions.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

MiB = 2**20
BIG = 10 * MiB  # well above the 100 KiB inline threshold


def store_used() -> int:
    """Bytes allocated in the node's shared-memory object store (asked from the raylet)."""
    core = ray._context.core

    async def ask():
        return await core.raylet.request(_messages.GetNodeStats())

    return core.run(ask(), timeout=10)["store"]["used"]


def fence() -> None:
    """Return once the raylet has applied every release this driver queued before the call.

    A put of a large object first sends the releases queued before it, then allocates, on
    the same connection; the raylet handles both in order.
    """
    ray.put(np.zeros(200 * 1024, dtype=np.uint8))






def mapping_of(address: int) -> str | None:
    """The file mapped at ``address`` in this process ('' for anonymous memory)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= address < hi:
                return fields[5] if len(fields) > 5 else ""
    return None


try:
    from numpy.lib.array_utils import byte_bounds  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1.x
    byte_bounds = np.byte_bounds


def big_array(n_bytes: int = BIG, seed: int = 0) -> np.ndarray:
    return np.arange(n_bytes // 8, dtype=np.float64) + seed


@ray.remote
def gated(gate: str, value):
    wait_for_file(gate)
    return value


@ray.remote
def identity(x):
    return x


@dataclasses.dataclass
class Point:
    x: int
    y: list


@pytest.fixture
def empty_store(cluster) -> Iterator[None]:
    """The module cluster's store is empty before the test and again after it (no leaks)."""
    wait_until(lambda: store_used() == 0, message="an empty store before the test")
    yield
    wait_until(lambda: store_used() == 0, message="the store to be empty after the test")


# -- on fresh clusters: these run before the module's shared cluster starts -------------


@ray.remote
def keep_in_worker(box):
    builtins.__dict__.setdefault("_cellfleet_test_kept", []).append(box[0])
    return os.getpid()


@ray.remote
def read_kept():
    ref = builtins.__dict__["_cellfleet_test_kept"].pop()
    return float(ray.get(ref, timeout=10).sum())


def test_ref_kept_by_a_worker_after_its_task_stays_alive(fresh_cluster):
    """Regression: the borrow was reported after the task result, so the owner freed the
    object first (ReferenceCountingAssertionError in the worker)."""
    fresh_cluster(num_cpus=1, object_store_memory=64 * MiB)  # one worker runs both tasks
    data = big_array(MiB)
    # The driver holds no ref of its own: the worker's borrow must keep the object.
    ray.get(keep_in_worker.remote([ray.put(data)]), timeout=20)
    assert ray.get(read_kept.remote(), timeout=20) == float(data.sum())


def test_ref_returned_to_its_owner_is_freed(fresh_cluster):
    fresh_cluster(num_cpus=1, object_store_memory=64 * MiB)  # one worker: warmed up below
    ray.get(identity.remote([ray.put("warm-up")]), timeout=20)
    for seed in range(3):
        ref = ray.put(big_array(seed=seed))
        out = ray.get(identity.remote([ref]), timeout=20)
        assert out[0] == ref
        assert float(ray.get(out[0], timeout=20)[1]) == 1.0 + seed
        del ref, out
    wait_until(lambda: store_used() == 0, timeout=2, message="the returned refs to be freed")


def test_failed_multi_return_task_frees_what_it_stored(fresh_cluster):
    fresh_cluster(num_cpus=1, object_store_memory=64 * MiB)

    @ray.remote(num_returns=2)
    def half_picklable():
        return big_array(), threading.Lock()

    first, second = half_picklable.remote()
    for ref in (first, second):
        with pytest.raises(TypeError, match="half_picklable"):
            ray.get(ref, timeout=20)
    del first, second
    wait_until(lambda: store_used() == 0, timeout=2, message="the partial return to be freed")


# -- get ----------------------------------------------------------------------------------


def test_get_empty_list(cluster):
    assert ray.get([]) == []
    assert ray.get([], timeout=0) == []


def test_get_duplicates(cluster, empty_store):
    small = ray.put({"k": 1})
    big = ray.put(big_array())
    task = identity.remote(7)
    values = ray.get([small, task, small, big, task, big], timeout=20)
    assert values[0] == values[2] == {"k": 1}
    assert values[1] == values[4] == 7
    assert np.array_equal(values[3], values[5]) and values[3][5] == 5.0
    del small, big, task, values


def test_get_timeout_zero_on_pending_raises_get_timeout_error(cluster, tmp_path):
    gate = str(tmp_path / "gate")
    ref = gated.remote(gate, "late")
    try:
        start = time.monotonic()
        with pytest.raises(exceptions.GetTimeoutError) as info:
            ray.get(ref, timeout=0)
        assert time.monotonic() - start < 2
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value, exceptions.RayError)
        with pytest.raises(TimeoutError):  # caught as the builtin too
            ray.get([ray.put(1), ref], timeout=0)
    finally:
        touch(gate)
    assert ray.get(ref, timeout=20) == "late"
    assert ray.get(ref, timeout=0) == "late"  # ready now: timeout=0 returns it


def test_get_timeout_elapses(cluster, tmp_path):
    gate = str(tmp_path / "gate")
    ref = gated.remote(gate, "late")
    try:
        start = time.monotonic()
        with pytest.raises(exceptions.GetTimeoutError, match="1 of 1"):
            ray.get(ref, timeout=0.3)
        assert 0.3 <= time.monotonic() - start < 5
    finally:
        touch(gate)
    assert ray.get(ref, timeout=20) == "late"


@pytest.mark.parametrize("bad", [1, "ref", None, {"a": 1}, [1, 2]])
def test_get_of_non_refs_raises_value_error(cluster, bad):
    with pytest.raises(ValueError):
        ray.get(bad)


def test_get_of_list_with_a_non_ref_raises_value_error(cluster):
    with pytest.raises(ValueError):
        ray.get([ray.put(1), 2])


def test_get_negative_timeout_raises_value_error(cluster):
    with pytest.raises(ValueError):
        ray.get(ray.put(1), timeout=-1)


# -- wait ---------------------------------------------------------------------------------


def test_wait_returns_ready_and_not_ready_in_input_order(cluster, tmp_path):
    gate = str(tmp_path / "gate")
    pending = gated.remote(gate, "p")
    pending_too = identity.remote(pending)  # waits for its argument
    done = [ray.put(i) for i in range(3)]
    assert ray.get(done, timeout=20) == [0, 1, 2]
    refs = [done[2], pending, done[0], pending_too, done[1]]
    try:
        ready, not_ready = ray.wait(refs, num_returns=3, timeout=20)
        assert ready == [done[2], done[0], done[1]]
        assert not_ready == [pending, pending_too]
        ready, not_ready = ray.wait(refs, num_returns=2, timeout=20)
        assert ready == [done[2], done[0]]
        assert not_ready == [pending, pending_too, done[1]]
        ready, not_ready = ray.wait(refs)  # num_returns=1 by default
        assert ready == [done[2]] and len(not_ready) == 4
    finally:
        touch(gate)
    ready, not_ready = ray.wait(refs, num_returns=5, timeout=20)
    assert ready == refs and not_ready == []


def test_wait_timeout_zero_and_elapsed(cluster, tmp_path):
    gate = str(tmp_path / "gate")
    pending = gated.remote(gate, "p")
    done = ray.put("d")
    try:
        start = time.monotonic()
        assert ray.wait([pending, done], num_returns=2, timeout=0) == ([done], [pending])
        assert ray.wait([pending], timeout=0) == ([], [pending])
        assert time.monotonic() - start < 2
        start = time.monotonic()
        assert ray.wait([pending, done], num_returns=2, timeout=0.3) == ([done], [pending])
        assert 0.3 <= time.monotonic() - start < 5
    finally:
        touch(gate)
    assert ray.wait([pending], timeout=20) == ([pending], [])


def test_wait_counts_failed_tasks_as_ready(cluster):
    @ray.remote
    def fail():
        raise KeyError("x")

    ref = fail.remote()
    assert ray.wait([ref], timeout=20) == ([ref], [])
    with pytest.raises(KeyError):
        ray.get(ref, timeout=20)


def test_wait_num_returns_bounds(cluster):
    refs = [ray.put(i) for i in range(3)]
    with pytest.raises(ValueError):
        ray.wait(refs, num_returns=0)
    with pytest.raises(ValueError):
        ray.wait(refs, num_returns=-1)
    with pytest.raises(ValueError):
        ray.wait(refs, num_returns=4)
    assert ray.wait(refs, num_returns=3, timeout=20) == (refs, [])
    with pytest.raises(ValueError):
        ray.wait(refs, timeout=-1)


def test_wait_on_empty_list(cluster):
    assert ray.wait([]) == ([], [])


def test_wait_duplicates_raise_value_error(cluster):
    ref = ray.put(1)
    with pytest.raises(ValueError, match="unique"):
        ray.wait([ref, ref])


@pytest.mark.parametrize("bad", [None, 1, "ref"])
def test_wait_requires_a_list_of_refs(cluster, bad):
    with pytest.raises(TypeError):
        ray.wait(bad)
    with pytest.raises(TypeError):
        ray.wait([ray.put(1), bad])


def test_wait_on_a_single_ref_raises_type_error(cluster):
    with pytest.raises(TypeError):
        ray.wait(ray.put(1))


# -- put ----------------------------------------------------------------------------------

ROUNDTRIP_VALUES = {
    "none": None,
    "int": -(2**100),
    "float": 1.5,
    "complex": 1 - 2j,
    "str": "ünïcödé ✓",
    "bytes": b"\x00\xff" * 10,
    "bytearray": bytearray(b"abc"),
    "nested": {"a": [1, (2, 3), {4, 5}], "b": frozenset({"x"})},
    "dataclass": Point(1, [2, 3]),
    "big-bytes": os.urandom(300 * 1024),
    "small-array": np.arange(10, dtype=np.int16),
    "big-array": big_array(MiB),
    "fortran-array": np.asfortranarray(np.arange(200_000, dtype=np.float32).reshape(400, 500)),
    "strided-array": np.arange(100_000, dtype=np.int64)[::3],
    "structured": np.zeros(50_000, dtype=[("a", "i4"), ("b", "f8")]),
    "0d-array": np.array(3.5),
    "empty-array": np.zeros((0, 3)),
    "arrays-in-dict": {"x": big_array(MiB), "y": np.ones(300_000, dtype=np.uint8), "z": "s"},
}


def assert_same(a, b) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    else:
        assert type(a) is type(b) and a == b


@pytest.mark.parametrize("name", list(ROUNDTRIP_VALUES))
def test_put_get_roundtrip(cluster, empty_store, name):
    value = ROUNDTRIP_VALUES[name]
    ref = ray.put(value)
    assert isinstance(ref, ray.ObjectRef)
    assert_same(value, ray.get(ref, timeout=20))
    # And through a task, which reads the object in another process.
    assert_same(value, ray.get(identity.remote(ref), timeout=20))
    del ref


def test_put_of_an_object_ref_raises_type_error(cluster):
    ref = ray.put(1)
    with pytest.raises(TypeError):
        ray.put(ref)
    # Wrapped in a container it is fine, and comes back as the same ref.
    holder = ray.put([ref])
    assert ray.get(holder, timeout=20) == [ref]


def test_put_of_an_unpicklable_value_raises_type_error(cluster):
    with pytest.raises(TypeError, match="lock"):
        ray.put(threading.Lock())


# -- shared memory ------------------------------------------------------------------------


def test_small_objects_stay_out_of_shared_memory(cluster, empty_store):
    refs = [ray.put(np.ones(90 * 1024, dtype=np.uint8)), ray.put(b"x" * 50_000),
            identity.remote(np.ones(90 * 1024, dtype=np.uint8))]
    ray.get(refs, timeout=20)
    assert store_used() == 0  # inline: below the 100 KiB threshold
    refs.append(ray.put(np.ones(101 * 1024, dtype=np.uint8)))
    assert store_used() >= 101 * 1024
    del refs


def test_large_array_is_a_read_only_zero_copy_view_of_the_arena(cluster, empty_store):
    arena = f"/dev/shm/{ray._context.core.arena.name}"
    source = big_array()
    ref = ray.put(source)
    from_put = ray.get(ref, timeout=20)
    from_task = ray.get(identity.remote(ref), timeout=20)
    for value in (from_put, from_task):
        assert np.array_equal(value, source)
        assert value.flags.writeable is False
        with pytest.raises(ValueError):
            value[0] = 1.0
        low, high = byte_bounds(value)
        assert mapping_of(low) == arena
        assert mapping_of(high - 1) == arena
    del ref, from_put, from_task


# -- reference counting ------------------------------------------------------------------


def test_objects_are_read_by_id_not_by_where_they_once_were(cluster, empty_store):
    """A stale payload never reads another object's bytes: the raylet finds objects by id."""
    core = ray._context.core
    first = ray.put(np.full(BIG, 1, dtype=np.uint8))
    payload = core.refs.entries[first._id].payload
    first_id = first._id
    del first
    wait_until(lambda: store_used() == 0, timeout=10)
    second = ray.put(np.full(BIG, 2, dtype=np.uint8))  # most likely in the same block
    with pytest.raises(exceptions.ObjectLostError):
        core.read_payload(first_id, payload)
    assert ray.get(second)[0] == 2


def test_put_and_del_move_store_usage(cluster, empty_store):
    ref = ray.put(big_array())
    assert store_used() >= BIG  # allocated before put returns
    del ref
    wait_until(lambda: store_used() == 0, message="the object to be freed after del")


def test_live_array_keeps_its_object_after_the_ref_is_gone(cluster, empty_store):
    ref = ray.put(big_array())
    view = ray.get(ref, timeout=20)
    del ref
    fence()
    assert store_used() >= BIG, "freed while a numpy view of it was alive"
    assert view[123] == 123.0
    del view
    wait_until(lambda: store_used() == 0, message="the object to be freed after the view")


def test_ref_nested_in_a_put_object_lives_as_long_as_the_outer(cluster, empty_store):
    inner = ray.put(big_array(seed=1))
    outer = ray.put({"inner": [inner]})
    del inner
    fence()
    assert store_used() >= BIG, "the inner object was freed while the outer held it"
    got = ray.get(outer, timeout=20)["inner"][0]
    assert isinstance(got, ray.ObjectRef)
    assert ray.get(got, timeout=20)[0] == 1.0
    del got
    fence()
    assert store_used() >= BIG
    del outer
    wait_until(lambda: store_used() == 0, message="inner to be freed with the outer")


def test_ref_held_by_a_running_task_keeps_the_object(cluster, empty_store, tmp_path):
    gate = str(tmp_path / "gate")

    @ray.remote
    def read_later(box, gate):
        wait_for_file(gate)
        return float(ray.get(box[0], timeout=20).sum())

    data = big_array()
    ref = ray.put(data)
    task = read_later.remote([ref], gate)
    del ref
    fence()
    assert store_used() >= BIG, "freed while a running task held a ref to it"
    touch(gate)
    assert ray.get(task, timeout=20) == float(data.sum())
    del task
    wait_until(lambda: store_used() == 0, message="the object to be freed after the task")


def test_top_level_arg_of_a_running_task_is_kept(cluster, empty_store, tmp_path):
    gate = str(tmp_path / "gate")

    @ray.remote
    def sum_later(array, gate):
        wait_for_file(gate)
        return float(array.sum())

    data = big_array()
    ref = ray.put(data)
    task = sum_later.remote(ref, gate)
    del ref
    fence()
    assert store_used() >= BIG, "freed while a running task used it"
    touch(gate)
    assert ray.get(task, timeout=20) == float(data.sum())
    del task


def test_task_results_are_freed_when_their_refs_go(cluster, empty_store):
    @ray.remote
    def make(n):
        return big_array(n)

    refs = [make.remote(BIG) for _ in range(2)]
    assert ray.wait(refs, num_returns=2, timeout=20)[1] == []
    assert store_used() >= 2 * BIG
    del refs
    wait_until(lambda: store_used() == 0, message="unread task results to be freed")


def test_results_of_subtasks_are_freed(cluster, empty_store):
    @ray.remote
    def child():
        return big_array(seed=2)

    @ray.remote
    def parent():
        return [child.remote()]  # owned by the worker, borrowed by the driver

    box = ray.get(parent.remote(), timeout=20)
    assert ray.get(box[0], timeout=20)[0] == 2.0
    del box
    wait_until(lambda: store_used() == 0, message="the worker-owned result to be freed")


# -- store full ---------------------------------------------------------------------------


def test_put_larger_than_the_store_raises_object_store_full(cluster, empty_store):
    huge = np.zeros(300 * MiB, dtype=np.uint8)  # untouched pages: costs no memory
    with pytest.raises(exceptions.ObjectStoreFullError) as info:
        ray.put(huge)
    message = str(info.value)
    assert "300.0 MiB" in message and "256.0 MiB" in message
    # The cluster keeps working.
    ref = ray.put(big_array())
    assert ray.get(identity.remote(ref), timeout=20)[7] == 7.0
    del ref


def test_a_store_full_of_live_objects_spills_one_to_make_room(cluster, empty_store):
    first = ray.put(np.full(200 * MiB, 1, dtype=np.uint8))
    second = ray.put(np.full(100 * MiB, 2, dtype=np.uint8))  # the first goes to disk
    assert ray.get(second, timeout=20)[0] == 2
    assert ray.get(first, timeout=60)[-1] == 1  # read back (spilling the second)
    del first, second
    wait_until(lambda: store_used() == 0, timeout=10)


def test_task_result_larger_than_the_store_fails_at_get(cluster, empty_store):
    @ray.remote
    def huge():
        return np.zeros(300 * MiB, dtype=np.uint8)

    with pytest.raises(exceptions.ObjectStoreFullError):
        ray.get(huge.remote(), timeout=30)
    assert ray.get(identity.remote(1), timeout=20) == 1


# -- large arguments and results ----------------------------------------------------------


def test_large_arguments_passed_directly(cluster, empty_store):
    @ray.remote
    def total(a, b, *, c, nested):
        return float(a.sum()) + len(b) + float(c.sum()) + float(nested[0].sum()) + nested[1]

    a = np.ones(MiB // 8)  # 1 MiB
    b = b"x" * (200 * 1024)
    c = np.full(100_000, 2.0)
    nested = [np.ones(50_000), 5]
    expected = float(a.sum()) + len(b) + float(c.sum()) + 50_000 + 5
    assert ray.get(total.remote(a, b, c=c, nested=nested), timeout=20) == expected
    # Twice more: the implicit copies in the store must not accumulate (empty_store checks).
    refs = [total.remote(a, b, c=c, nested=nested) for _ in range(2)]
    assert ray.get(refs, timeout=20) == [expected, expected]


def test_large_results_come_back_intact(cluster, empty_store):
    @ray.remote
    def produce(kind):
        if kind == "array":
            return big_array(seed=3)
        if kind == "bytes":
            return bytes(range(256)) * 1024
        return {"a": big_array(MiB, seed=4), "b": [np.arange(200_000, dtype=np.int32)]}

    array, data, mixed = ray.get([produce.remote(k) for k in ("array", "bytes", "mixed")],
                                 timeout=20)
    assert np.array_equal(array, big_array(seed=3))
    assert data == bytes(range(256)) * 1024
    assert np.array_equal(mixed["a"], big_array(MiB, seed=4))
    assert np.array_equal(mixed["b"][0], np.arange(200_000, dtype=np.int32))
    del array, data, mixed


# -- worker output ------------------------------------------------------------------------


@ray.remote
def chatty(token):
    print(f"out-{token}")
    print(f"err-{token}", file=sys.stderr)
    return os.getpid()


@ray.remote
def whisper(token):
    print(f"whisper-{token}")
    return os.getpid()


@ray.remote
def chatty_parent():
    # whisper is only ever called here, so its prints come from the nested task alone.
    return ray.get(whisper.remote("nested"), timeout=20)


def test_worker_prints_reach_the_driver_with_a_prefix(cluster, capsys):
    pid = ray.get(chatty.remote("a1"), timeout=20)
    named_pid = ray.get(chatty.options(name="talker").remote("b2"), timeout=20)
    out, err = [], []

    def printed() -> bool:
        captured = capsys.readouterr()
        out.append(captured.out)
        err.append(captured.err)
        text_out, text_err = "".join(out), "".join(err)
        return (f"pid={pid}) out-a1" in text_out and f"pid={named_pid}) out-b2" in text_out
                and f"pid={named_pid}) err-b2" in text_err)

    wait_until(printed, message="worker prints at the driver")
    text_out, text_err = "".join(out), "".join(err)
    assert f"(chatty pid={pid}) out-a1\n" in text_out
    assert f"(talker pid={named_pid}) out-b2\n" in text_out
    assert f"(talker pid={named_pid}) err-b2\n" in text_err
    assert "err-b2" not in text_out


def test_print_without_newline_reaches_the_driver(cluster, capsys):
    @ray.remote
    def progress():
        print("step-1")
        print("50%...", end="")
        return os.getpid()

    pid = ray.get(progress.remote(), timeout=20)
    seen = []

    def printed(text: str):
        def check() -> bool:
            seen.append(capsys.readouterr().out)
            return text in "".join(seen)
        return check

    wait_until(printed(f"pid={pid}) step-1\n"), message="the complete line")
    wait_until(printed(f"pid={pid}) 50%...\n"), timeout=3, message="the partial line")


def test_prints_of_nested_tasks_reach_the_driver(cluster, capsys):
    pid = ray.get(chatty_parent.remote(), timeout=20)
    seen = []

    def printed() -> bool:
        seen.append(capsys.readouterr().out)
        return f"(whisper pid={pid}) whisper-nested\n" in "".join(seen)

    wait_until(printed, message="the nested task's print at the driver")


def test_objects_borrowed_by_a_process_that_died_are_freed(cluster):
    @ray.remote
    class Holder:
        def hold(self, box):
            self.box = box  # keeps the ref inside: this process borrows the object
            return os.getpid()

    fence()
    before = store_used()
    ref = ray.put(np.ones(5 * 2**20, dtype=np.uint8))
    holder = Holder.remote()
    pid = ray.get(holder.hold.remote([ref]), timeout=30)
    del ref
    fence()
    assert store_used() >= before + 5 * 2**20  # the actor's borrow keeps it
    os.kill(pid, 9)
    wait_until(lambda: store_used() <= before, timeout=15,
               message="the dead borrower's object to be freed")
    del holder
