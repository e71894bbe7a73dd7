"""Tests for cellfleet.exceptions: Ray's hierarchy, RayTaskError's dual types, pickling."""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle
import pytest

import cellfleet.exceptions as exc_module
from cellfleet.exceptions import (
    ActorDeathReason,
    ActorDiedError,
    ActorPlacementGroupRemoved,
    ActorUnavailableError,
    ActorUnschedulableError,
    AsyncioActorExit,
    AuthenticationError,
    CrossLanguageError,
    GetTimeoutError,
    LocalRayletDiedError,
    NodeDiedError,
    ObjectFetchTimedOutError,
    ObjectLostError,
    ObjectReconstructionFailedError,
    ObjectReconstructionFailedLineageEvictedError,
    ObjectReconstructionFailedMaxAttemptsExceededError,
    ObjectStoreFullError,
    OutOfDiskError,
    OutOfMemoryError,
    OwnerDiedError,
    PendingCallsLimitExceeded,
    ProtocolError,
    RayActorError,
    RayError,
    RaySystemError,
    RayTaskError,
    ReferenceCountingAssertionError,
    RuntimeEnvSetupError,
    TaskCancelledError,
    TaskPlacementGroupRemoved,
    TaskUnschedulableError,
    WorkerCrashedError,
)

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/app/job.py", line 7, in parse\n'
    "    return int(text)\n"
    "ValueError: invalid literal for int() with base 10: 'x'\n"
)


class QuotaError(Exception):
    """A user exception whose __init__ takes arguments of its own."""

    def __init__(self, user: str, limit: int) -> None:
        super().__init__(user, limit)
        self.user = user
        self.limit = limit


class SealedError(Exception):
    """A user exception that refuses to be subclassed."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("SealedError is final")


def task_error(cause: BaseException, function_name: str = "parse") -> RayTaskError:
    return RayTaskError(function_name, TRACEBACK, cause, pid=4242, ip="10.0.0.7")


# --- hierarchy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subclass", "base"),
    [
        (RayError, Exception),
        (RayTaskError, RayError),
        (RayActorError, RayError),
        (ActorDiedError, RayActorError),
        (ActorUnavailableError, RayActorError),
        (ActorUnschedulableError, RayError),
        (TaskUnschedulableError, RayError),
        (TaskCancelledError, RayError),
        (TaskPlacementGroupRemoved, RayError),
        (ActorPlacementGroupRemoved, RayError),
        (PendingCallsLimitExceeded, RayError),
        (WorkerCrashedError, RayError),
        (LocalRayletDiedError, RayError),
        (NodeDiedError, RayError),
        (GetTimeoutError, RayError),
        (GetTimeoutError, TimeoutError),
        (ObjectLostError, RayError),
        (ObjectFetchTimedOutError, ObjectLostError),
        (ReferenceCountingAssertionError, ObjectLostError),
        (ReferenceCountingAssertionError, AssertionError),
        (OwnerDiedError, ObjectLostError),
        (ObjectReconstructionFailedError, ObjectLostError),
        (ObjectReconstructionFailedMaxAttemptsExceededError, ObjectReconstructionFailedError),
        (ObjectReconstructionFailedLineageEvictedError, ObjectReconstructionFailedError),
        (ObjectStoreFullError, RayError),
        (OutOfDiskError, RayError),
        (OutOfMemoryError, RayError),
        (RaySystemError, RayError),
        (CrossLanguageError, RayError),
        (RuntimeEnvSetupError, RayError),
        (AsyncioActorExit, RayError),
        (AuthenticationError, RayError),
        (ProtocolError, RayError),
    ],
)
def test_hierarchy(subclass: type, base: type) -> None:
    assert issubclass(subclass, base)


@pytest.mark.parametrize(
    ("subclass", "not_base"),
    [
        (ActorUnschedulableError, RayActorError),
        (RayTaskError, RayActorError),
        (ObjectStoreFullError, ObjectLostError),
        (TaskCancelledError, RayTaskError),
    ],
)
def test_hierarchy_keeps_ray_siblings_apart(subclass: type, not_base: type) -> None:
    assert not issubclass(subclass, not_base)


def test_get_timeout_error_is_caught_as_timeout_error() -> None:
    with pytest.raises(TimeoutError):
        raise GetTimeoutError("get() timed out after 1.0 seconds")


def test_all_names_exist() -> None:
    assert sorted(exc_module.__all__) == sorted(set(exc_module.__all__))
    for name in exc_module.__all__:
        assert getattr(exc_module, name).__module__ == exc_module.__name__


# --- RayTaskError --------------------------------------------------------------------------


def test_str_shows_function_pid_ip_and_remote_traceback() -> None:
    text = str(task_error(ValueError("invalid literal")))
    header, _, rest = text.partition("\n")
    assert header == "ray::parse() (pid=4242, ip=10.0.0.7)"
    assert rest == TRACEBACK.rstrip()


def test_str_without_pid_and_ip() -> None:
    assert str(RayTaskError("Counter.incr", "tb", KeyError("k"))) == "ray::Counter.incr()\ntb"


def test_fields() -> None:
    cause = ValueError("invalid literal")
    error = task_error(cause)
    assert (error.function_name, error.traceback_str, error.cause) == ("parse", TRACEBACK, cause)
    assert (error.pid, error.ip) == (4242, "10.0.0.7")


def test_as_instanceof_cause_builtin() -> None:
    cause = ValueError("invalid literal")
    dual = task_error(cause).as_instanceof_cause()
    assert isinstance(dual, RayTaskError)
    assert isinstance(dual, ValueError)
    assert isinstance(dual, RayError)
    assert type(dual).__name__ == "RayTaskError(ValueError)"
    assert dual.cause is cause
    assert dual.args == cause.args
    assert str(dual) == str(task_error(cause))
    assert "ray::parse()" in str(dual)
    assert "ValueError: invalid literal for int()" in str(dual)


def test_except_cause_type_catches_dual() -> None:
    with pytest.raises(ValueError, match=r"ray::parse\(\)") as info:
        raise task_error(ValueError("bad")).as_instanceof_cause()
    assert isinstance(info.value, RayTaskError)


def test_except_ray_task_error_catches_dual() -> None:
    with pytest.raises(RayTaskError):
        raise task_error(KeyError("missing")).as_instanceof_cause()


def test_as_instanceof_cause_user_exception_with_custom_init() -> None:
    cause = QuotaError("ada", 3)
    dual = task_error(cause).as_instanceof_cause()
    assert isinstance(dual, QuotaError)
    assert isinstance(dual, RayTaskError)
    assert type(dual).__name__ == "RayTaskError(QuotaError)"
    assert (dual.user, dual.limit) == ("ada", 3)  # read through from the cause
    assert dual.args == ("ada", 3)
    with pytest.raises(QuotaError):
        raise dual


def test_missing_attribute_still_raises_attribute_error() -> None:
    dual = task_error(ValueError("x")).as_instanceof_cause()
    with pytest.raises(AttributeError):
        _ = dual.no_such_attribute


def test_dual_class_is_cached_per_cause_type() -> None:
    first = task_error(ValueError("a")).as_instanceof_cause()
    second = task_error(ValueError("b"), function_name="other").as_instanceof_cause()
    assert type(first) is type(second)
    assert type(task_error(QuotaError("x", 1)).as_instanceof_cause()) is not type(first)


def test_dual_of_dual_is_itself() -> None:
    dual = task_error(ValueError("x")).as_instanceof_cause()
    assert dual.as_instanceof_cause() is dual


def test_fallback_when_cause_type_cannot_be_subclassed() -> None:
    error = task_error(SealedError("nope"))
    assert error.as_instanceof_cause() is error
    assert error.as_instanceof_cause() is error  # the failure is cached, not retried
    assert pickle.loads(pickle.dumps(error)).cause.args == ("nope",)


def test_fallback_when_cause_is_a_ray_error_already() -> None:
    error = task_error(RayError("base"))
    assert error.as_instanceof_cause() is error


def test_no_dual_for_base_exceptions_outside_exception() -> None:
    error = task_error(KeyboardInterrupt())
    assert error.as_instanceof_cause() is error
    assert not isinstance(error.as_instanceof_cause(), KeyboardInterrupt)


def test_nested_task_error_cause() -> None:
    inner = task_error(ValueError("deep")).as_instanceof_cause()
    outer = RayTaskError("outer", "outer tb", inner, pid=1, ip="10.0.0.8")
    result = outer.as_instanceof_cause()
    assert isinstance(result, RayTaskError)
    assert str(result).startswith("ray::outer() (pid=1, ip=10.0.0.8)")


@pytest.mark.parametrize(
    ("dumps", "loads"), [(pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)]
)
@pytest.mark.parametrize("cause", [ValueError("bad"), QuotaError("ada", 3), KeyError("k")])
def test_dual_pickle_round_trip(dumps: Any, loads: Any, cause: Exception) -> None:
    dual = task_error(cause).as_instanceof_cause()
    loaded = loads(dumps(dual))
    assert type(loaded) is type(dual)
    assert isinstance(loaded, type(cause))
    assert str(loaded) == str(dual)
    assert loaded.args == dual.args
    assert (loaded.function_name, loaded.pid, loaded.ip) == ("parse", 4242, "10.0.0.7")
    assert type(loaded.cause) is type(cause)
    assert loaded.cause.args == cause.args


def test_plain_pickle_round_trip_stays_plain() -> None:
    loaded = pickle.loads(pickle.dumps(task_error(ValueError("bad"))))
    assert type(loaded) is RayTaskError
    assert not isinstance(loaded, ValueError)


# --- other messages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        (None, "unexpectedly"),
        (ActorDeathReason.KILLED, "killed"),
        ("creation_task_error", "creation task"),
        (ActorDeathReason.PROCESS_DIED, "worker process exited"),
        (ActorDeathReason.NODE_DIED, "node died"),
        (ActorDeathReason.OUT_OF_SCOPE, "out of scope"),
    ],
)
def test_actor_died_error_says_why(reason: ActorDeathReason | str | None, words: str) -> None:
    error = ActorDiedError("a1b2", reason, "ZeroDivisionError in __init__")
    assert words in str(error)
    assert "a1b2" in str(error)
    assert "ZeroDivisionError in __init__" in str(error)
    assert error.reason == (None if reason is None else ActorDeathReason(reason))


def test_actor_died_error_rejects_unknown_reason() -> None:
    with pytest.raises(ValueError, match="bored"):
        ActorDiedError("a1b2", "bored")


def test_authentication_error_points_at_token_and_address() -> None:
    text = str(AuthenticationError("peer failed the token challenge"))
    assert text.startswith("peer failed the token challenge. ")
    assert "cluster token" in text
    assert "address" in text
    assert str(AuthenticationError()).count("cluster token") == 1


def test_message_only_errors_rebuild_from_their_text() -> None:
    for error in (
        AuthenticationError("bad proof"),
        ProtocolError("frame too large"),
        TaskUnschedulableError("no node has 8 GPUs"),
        ObjectStoreFullError("full"),
    ):
        assert str(type(error)(str(error))) == str(error)


def test_object_lost_error_message() -> None:
    text = str(OwnerDiedError("ff00", "10.0.0.9:7000", "job.py:12"))
    assert "Failed to retrieve object ff00." in text
    assert "owner has exited" in text
    assert "10.0.0.9:7000" in text
    assert "job.py:12" in text


def test_task_cancelled_error_message() -> None:
    assert str(TaskCancelledError("t1")) == "Task: t1 was cancelled."
    assert str(TaskCancelledError()) == "The task was cancelled."


# --- pickling every exception --------------------------------------------------------------

EXAMPLES: dict[str, BaseException] = {
    "RayError": RayError("generic"),
    "RayTaskError": task_error(QuotaError("ada", 3)),
    "RayActorError": RayActorError("a1b2", "the actor went away"),
    "ActorDiedError": ActorDiedError("a1b2", ActorDeathReason.CREATION_TASK_ERROR, "tb here"),
    "ActorExitRequest": exc_module.ActorExitRequest("exit_actor() was called"),
    "ActorUnavailableError": ActorUnavailableError("connection reset", "a1b2"),
    "ActorUnschedulableError": ActorUnschedulableError("node n1 is dead"),
    "TaskUnschedulableError": TaskUnschedulableError("node n1 is dead"),
    "TaskCancelledError": TaskCancelledError("t1", "cancelled by the driver"),
    "TaskPlacementGroupRemoved": TaskPlacementGroupRemoved(),
    "ActorPlacementGroupRemoved": ActorPlacementGroupRemoved(),
    "PendingCallsLimitExceeded": PendingCallsLimitExceeded("over 10 pending calls"),
    "WorkerCrashedError": WorkerCrashedError("exit code -9"),
    "LocalRayletDiedError": LocalRayletDiedError(),
    "NodeDiedError": NodeDiedError("node n1 died"),
    "GetTimeoutError": GetTimeoutError("get() timed out after 1.0 seconds"),
    "ObjectLostError": ObjectLostError("ff00", "10.0.0.9:7000", "job.py:12"),
    "ObjectFetchTimedOutError": ObjectFetchTimedOutError("ff01"),
    "ReferenceCountingAssertionError": ReferenceCountingAssertionError("ff02", "10.0.0.9:7000"),
    "OwnerDiedError": OwnerDiedError("ff03", "10.0.0.9:7000", "job.py:12"),
    "ObjectReconstructionFailedError": ObjectReconstructionFailedError("ff04"),
    "ObjectReconstructionFailedMaxAttemptsExceededError": (
        ObjectReconstructionFailedMaxAttemptsExceededError("ff05", call_site="job.py:3")
    ),
    "ObjectReconstructionFailedLineageEvictedError": (
        ObjectReconstructionFailedLineageEvictedError("ff06")
    ),
    "ObjectStoreFullError": ObjectStoreFullError("cannot store 1.0 GiB"),
    "OutOfDiskError": OutOfDiskError("disk 95% full"),
    "OutOfMemoryError": OutOfMemoryError("node n1 ran out of memory"),
    "RaySystemError": RaySystemError(ConnectionError("gcs unreachable"), "system tb"),
    "CrossLanguageError": CrossLanguageError("raised from Java"),
    "RuntimeEnvSetupError": RuntimeEnvSetupError("pip install failed"),
    "AsyncioActorExit": AsyncioActorExit(),
    "AuthenticationError": AuthenticationError("peer failed the token challenge"),
    "ProtocolError": ProtocolError("malformed message"),
}


def _comparable(value: Any) -> Any:
    """Exceptions compare by identity; compare them by type and arguments instead."""
    if isinstance(value, BaseException):
        return type(value), _comparable(value.args), _comparable(vars(value))
    if isinstance(value, tuple | list):
        return type(value)(_comparable(item) for item in value)
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items()}
    return value


def test_examples_cover_every_exception_in_all() -> None:
    exception_names = {
        name
        for name in exc_module.__all__
        if isinstance(getattr(exc_module, name), type)
        and issubclass(getattr(exc_module, name), BaseException)
    }
    assert exception_names == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
@pytest.mark.parametrize(
    ("dumps", "loads"), [(pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)]
)
def test_pickle_round_trip(name: str, dumps: Any, loads: Any) -> None:
    error = EXAMPLES[name]
    assert type(error).__name__ == name
    loaded = loads(dumps(error))
    assert type(loaded) is type(error)
    assert str(loaded) == str(error)
    assert _comparable(loaded) == _comparable(error)
