"""Errors against a real local cluster: task exceptions, bad arguments, crashes, retries."""

from __future__ import annotations

import inspect
import os
import sys
import threading

import cloudpickle
import pytest

import cellfleet as ray
from cellfleet import exceptions

pytestmark = pytest.mark.integration

# Workers cannot import this test module: ship its helpers by value with the functions.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class QuotaExceeded(LookupError):
    """A user-defined exception with a field of its own."""

    def __init__(self, message: str, limit: int = 0) -> None:
        super().__init__(message)
        self.limit = limit

    def __reduce__(self):
        return type(self), (self.args[0], self.limit)


def record_attempt(path: str) -> int:
    """Append one line to ``path``; returns how many attempts it holds now."""
    with open(path, "a") as f:
        f.write("attempt\n")
    with open(path) as f:
        return len(f.readlines())


def attempts(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return len(f.readlines())


@ray.remote
def explode(x):
    if x > 0:
        raise RuntimeError(f"kaboom-{x}")
    return x


@ray.remote
def increment(x, marker=None):
    if marker:
        record_attempt(marker)
    return x + 1


# -- exceptions raised by tasks -----------------------------------------------------------


def test_task_exception_is_ray_task_error_and_the_cause_type(cluster):
    @ray.remote
    def bad_value():
        raise ValueError("not a number: 'x'")

    with pytest.raises(ValueError) as info:
        ray.get(bad_value.remote(), timeout=20)
    error = info.value
    assert isinstance(error, exceptions.RayTaskError)
    assert isinstance(error, exceptions.RayError)
    assert isinstance(error.cause, ValueError)
    assert error.args == ("not a number: 'x'",)
    assert error.function_name.endswith("bad_value")
    assert "not a number: 'x'" in str(error)
    # The same error comes back on every get.
    ref = bad_value.remote()
    for _ in range(2):
        with pytest.raises(exceptions.RayTaskError):
            ray.get(ref, timeout=20)


def test_custom_exception_class(cluster):
    @ray.remote
    def over_quota(n):
        raise QuotaExceeded(f"{n} is over the limit", limit=n - 1)

    with pytest.raises(QuotaExceeded) as info:
        ray.get(over_quota.remote(5), timeout=20)
    error = info.value
    assert isinstance(error, exceptions.RayTaskError)
    assert isinstance(error, LookupError)  # its base classes catch it too
    assert isinstance(error.cause, QuotaExceeded)
    assert error.cause.limit == 4
    assert error.limit == 4  # fields of the cause are reachable on the error itself
    assert "5 is over the limit" in str(error)


def test_remote_traceback_names_the_function_and_the_raising_line(cluster):
    with pytest.raises(RuntimeError) as info:
        ray.get(explode.remote(7), timeout=20)
    text = str(info.value)
    lines, first = inspect.getsourcelines(explode._function)
    offset = next(i for i, line in enumerate(lines) if "raise RuntimeError" in line)
    assert f'{__file__}", line {first + offset}, in explode' in text
    assert 'raise RuntimeError(f"kaboom-{x}")' in text
    assert "RuntimeError: kaboom-7" in text
    assert text.startswith("ray::explode()")
    assert info.value.traceback_str.rstrip() in text
    assert f"pid={info.value.pid}" in text


def test_traceback_includes_frames_of_helpers(cluster):
    def helper(depth):
        if depth == 0:
            return {}["missing-key"]
        return helper(depth - 1)

    @ray.remote
    def uses_helper():
        return helper(2)

    with pytest.raises(KeyError) as info:
        ray.get(uses_helper.remote(), timeout=20)
    text = info.value.traceback_str
    assert "in uses_helper" in text
    assert text.count("in helper") == 3
    assert 'return {}["missing-key"]' in text


def test_exception_that_cannot_be_pickled_still_reports(cluster):
    class Holding(Exception):
        def __init__(self):
            super().__init__("holds a lock")
            self.lock = threading.Lock()

    @ray.remote
    def raise_holding():
        raise Holding()

    with pytest.raises(exceptions.RayTaskError) as info:
        ray.get(raise_holding.remote(), timeout=20)
    assert "holds a lock" in str(info.value)
    assert "Holding" in str(info.value)


def test_failure_propagates_through_a_chain_of_dependent_tasks(cluster, tmp_path):
    markers = [str(tmp_path / "b"), str(tmp_path / "c")]
    a = explode.remote(3)
    b = increment.remote(a, markers[0])
    c = increment.remote(b, markers[1])
    for ref in (c, b, a):
        with pytest.raises(RuntimeError) as info:
            ray.get(ref, timeout=20)
        assert isinstance(info.value, exceptions.RayTaskError)
        assert info.value.function_name == "explode"  # the root cause, not its dependents
        assert "kaboom-3" in str(info.value)
    assert [attempts(m) for m in markers] == [0, 0]  # dependents never ran


def test_failure_read_through_a_nested_ref_inside_a_task(cluster):
    @ray.remote
    def read(box):
        return ray.get(box[0], timeout=20)

    with pytest.raises(exceptions.RayTaskError) as info:
        ray.get(read.remote([explode.remote(4)]), timeout=20)
    # The reader's error wraps the producer's, which keeps the original type.
    assert info.value.function_name.endswith("read")
    assert isinstance(info.value.cause, exceptions.RayTaskError)
    assert isinstance(info.value.cause, RuntimeError)
    assert info.value.cause.function_name == "explode"
    text = str(info.value)
    assert "in read" in text and "kaboom-4" in text


# -- errors at the call site --------------------------------------------------------------


def test_unpicklable_argument_raises_type_error_at_once(cluster, tmp_path):
    marker = str(tmp_path / "ran")
    with pytest.raises(TypeError) as info:
        increment.remote(threading.Lock(), marker)
    message = str(info.value)
    assert "argument #0 (lock)" in message and "increment()" in message
    with pytest.raises(TypeError) as info:
        increment.remote(1, marker=threading.Lock())
    assert "argument 'marker' (lock)" in str(info.value)
    with pytest.raises(TypeError, match=r"argument #0 \(list\)"):
        increment.remote([1, threading.Lock()])
    # Nothing was submitted; the function still works.
    assert ray.get(increment.remote(1, marker), timeout=20) == 2
    assert attempts(marker) == 1


def test_unpicklable_return_value_fails_at_get_naming_the_function(cluster):
    @ray.remote
    def give_lock():
        return threading.Lock()

    ref = give_lock.remote()  # submitting works: the failure is the task's
    with pytest.raises(TypeError) as info:
        ray.get(ref, timeout=20)
    assert isinstance(info.value, exceptions.RayTaskError)
    message = str(info.value)
    assert "Could not serialize the return value of" in message
    assert "give_lock() (lock)" in message


def test_calling_a_remote_function_directly_raises_type_error(cluster):
    with pytest.raises(TypeError, match=r"\.remote\(\)"):
        increment(1)
    with pytest.raises(TypeError, match="cannot be called directly"):
        increment.options(num_cpus=1)(1)


INVALID_OPTIONS = [
    {"num_cpus": -1},
    {"num_cpus": "two"},
    {"num_gpus": -0.5},
    {"memory": -1},
    {"num_returns": -1},
    {"num_returns": 1.5},
    {"num_returns": "2"},
    {"max_retries": -2},
    {"max_retries": 0.5},
    {"resources": {"CPU": 1}},
    {"resources": {"GPU": 1}},
    {"resources": ["custom"]},
    {"not_an_option": 1},
]


@pytest.mark.parametrize("options", INVALID_OPTIONS, ids=[str(o) for o in INVALID_OPTIONS])
def test_invalid_options_raise_value_error(cluster, options):
    # Ray's kinds: TypeError for an option of the wrong type, ValueError for a bad value.
    with pytest.raises((TypeError, ValueError)):
        ray.remote(**options)(lambda: None)
    with pytest.raises((TypeError, ValueError)):
        increment.options(**options)
    # The original function is unaffected.
    assert ray.get(increment.remote(0), timeout=20) == 1


def test_remote_decorator_misuse_raises_type_error(cluster):
    def plain():
        return 1

    with pytest.raises(TypeError):
        ray.remote(plain, num_cpus=1)
    with pytest.raises(TypeError):
        ray.remote(1)
    with pytest.raises(TypeError):
        ray.remote()(42)


# -- worker crashes and retries -----------------------------------------------------------


@ray.remote
def crash(marker, crashes=1_000):
    """Exit the worker process on the first ``crashes`` attempts, then succeed."""
    if record_attempt(marker) <= crashes:
        os._exit(1)
    return "survived"


def test_worker_crash_without_retries_raises_worker_crashed_error(cluster, tmp_path):
    marker = str(tmp_path / "attempts")
    with pytest.raises(exceptions.WorkerCrashedError) as info:
        ray.get(crash.options(max_retries=0).remote(marker), timeout=30)
    assert "crash()" in str(info.value)
    assert attempts(marker) == 1
    # The node replaces the worker and keeps running tasks.
    assert ray.get([increment.remote(i) for i in range(4)], timeout=30) == [1, 2, 3, 4]


def test_worker_crash_with_one_retry_runs_twice(cluster, tmp_path):
    marker = str(tmp_path / "attempts")
    with pytest.raises(exceptions.WorkerCrashedError):
        ray.get(crash.options(max_retries=1).remote(marker), timeout=30)
    assert attempts(marker) == 2


def test_worker_crash_is_retried_until_success(cluster, tmp_path):
    marker = str(tmp_path / "attempts")
    assert ray.get(crash.options(max_retries=1).remote(marker, crashes=1), timeout=30) == (
        "survived")
    assert attempts(marker) == 2


def test_tasks_queued_behind_a_crashing_task_are_not_failed(cluster, tmp_path):
    """Regression: short tasks pipelined behind a crashing one died with it, unrun."""
    @ray.remote(max_retries=0)
    def quick(i):
        return i

    assert ray.get(quick.remote(-1), timeout=20) == -1  # quick is now known to be short
    crashing = crash.options(max_retries=0).remote(str(tmp_path / "attempts"))
    refs = [quick.remote(i) for i in range(10)]
    with pytest.raises(exceptions.WorkerCrashedError):
        ray.get(crashing, timeout=30)
    assert ray.get(refs, timeout=30) == list(range(10))


@ray.remote
def flaky(marker, failures):
    """Raise on the first ``failures`` attempts, then succeed."""
    n = record_attempt(marker)
    if n <= failures:
        raise ValueError(f"attempt {n} failed")
    return n


def test_application_errors_are_not_retried_by_default(cluster, tmp_path):
    marker = str(tmp_path / "attempts")
    with pytest.raises(ValueError, match="attempt 1 failed"):
        ray.get(flaky.options(max_retries=3).remote(marker, 5), timeout=20)
    assert attempts(marker) == 1


def test_retry_exceptions_retries_application_errors(cluster, tmp_path):
    marker = str(tmp_path / "attempts")
    retried = flaky.options(retry_exceptions=True, max_retries=2)
    assert ray.get(retried.remote(marker, 2), timeout=30) == 3
    assert attempts(marker) == 3


def test_retry_exceptions_gives_up_after_max_retries(cluster, tmp_path):
    marker = str(tmp_path / "attempts")
    retried = flaky.options(retry_exceptions=True, max_retries=2)
    with pytest.raises(ValueError, match="attempt 3 failed"):
        ray.get(retried.remote(marker, 10), timeout=30)
    assert attempts(marker) == 3


def test_retry_exceptions_list_retries_only_listed_types(cluster, tmp_path):
    """Regression: a list was turned into True, so every exception type was retried."""
    marker = str(tmp_path / "attempts")

    @ray.remote(retry_exceptions=[ValueError], max_retries=2)
    def wrong_type(path):
        record_attempt(path)
        raise TypeError("not retryable")

    with pytest.raises(TypeError):
        ray.get(wrong_type.remote(marker), timeout=30)
    assert attempts(marker) == 1
    # A listed type is retried.
    listed = str(tmp_path / "listed")
    retried = flaky.options(retry_exceptions=[LookupError, ValueError], max_retries=2)
    assert ray.get(retried.remote(listed, 1), timeout=30) == 2
    assert attempts(listed) == 2
