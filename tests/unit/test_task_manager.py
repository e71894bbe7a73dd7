"""The owner's task manager and dependency resolver as state classes, without I/O.

Hypothesis drives them with events in any order, repeated and late (results that arrive
after a cancel, a worker's death after its result, a result of an attempt that was retried),
and checks that every task is completed exactly once, with the right kind of outcome.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cellfleet import exceptions
from cellfleet.core.dependency_resolver import DependencyResolver
from cellfleet.core.task_manager import (
    ArgumentsResolved,
    Cancel,
    CancelRequested,
    Complete,
    Dequeued,
    Pushed,
    ResultReceived,
    Retry,
    Schedule,
    SchedulingFailed,
    TaskManager,
    TaskSubmitted,
    WorkerLost,
)
from cellfleet.core.task_spec import TaskResult, TaskSpec


def spec(n: int, *, max_retries: int = 3, parent: int = 0, method: str = "") -> TaskSpec:
    return TaskSpec(n.to_bytes(16, "big"), 1, b"f", f"t{n}", b"", [], 1, "owner",
                    parent.to_bytes(16, "big"), "", {"CPU": 1}, max_retries, False,
                    actor_id=b"a" if method else b"", method=method)


def result(task: TaskSpec, *, ok: bool = True, retryable: bool = False) -> TaskResult:
    return TaskResult(task.task_id, ok, [["i", [0, b"", []]]], [], b"w", b"n", 1, 0.0, 0.0,
                      retryable, "" if ok else "boom")


def submit(manager: TaskManager, task: TaskSpec, submitted: list[bytes] = ()) -> list:
    return manager.handle(TaskSubmitted(task.task_id, "t", task, list(submitted)),
                          ArgumentsResolved(task.task_id, "t"))


def kinds(instructions: list) -> list[str]:
    return [type(i).__name__ for i in instructions]


def test_a_task_is_scheduled_once_its_arguments_are_ready_and_completed_by_its_result():
    manager = TaskManager()
    task = spec(1)
    assert kinds(submit(manager, task, [b"arg"])) == ["Schedule"]
    (done,) = manager.handle(ResultReceived(task.task_id, "r", result(task)))
    assert isinstance(done, Complete) and done.result.ok and done.submitted == [b"arg"]
    assert len(manager) == 0
    assert manager.handle(ResultReceived(task.task_id, "late", result(task))) == []


def test_a_failed_argument_fails_the_task_with_that_argument_s_error():
    manager = TaskManager()
    task = spec(1)
    manager.handle(TaskSubmitted(task.task_id, "t", task, []))
    (done,) = manager.handle(ArgumentsResolved(task.task_id, "t", ["i", ["err"]]))
    assert isinstance(done, Complete) and done.error == ["i", ["err"]]


def test_a_worker_s_death_is_retried_up_to_max_retries_then_fails_naming_the_attempts():
    manager = TaskManager()
    task = spec(1, max_retries=2)
    submit(manager, task)
    for attempt in (1, 2):
        (retry,) = manager.handle(WorkerLost(task.task_id, "lost"))
        assert isinstance(retry, Retry) and retry.spec.attempt == attempt
    (done,) = manager.handle(WorkerLost(task.task_id, "lost"))
    assert isinstance(done.error, exceptions.WorkerCrashedError)
    assert "after 3 attempt(s); max_retries=2" in str(done.error)


def test_only_retryable_failures_of_plain_tasks_are_retried():
    manager = TaskManager()
    plain, call = spec(1), spec(2, method="m")
    submit(manager, plain)
    submit(manager, call)
    assert kinds(manager.handle(ResultReceived(plain.task_id, "r",
                                               result(plain, ok=False)))) == ["Complete"]
    assert kinds(manager.handle(ResultReceived(call.task_id, "r",
                                               result(call, ok=False, retryable=True)))) \
        == ["Complete"]  # actor calls are not retried here
    again = spec(3)
    submit(manager, again)
    assert kinds(manager.handle(ResultReceived(again.task_id, "r",
                                               result(again, ok=False, retryable=True)))) \
        == ["Retry"]


def test_a_cancelled_task_is_never_retried_and_ends_cancelled():
    manager = TaskManager()
    task = spec(1)
    submit(manager, task)
    manager.handle(Pushed(task.task_id, "push"))
    (cancel,) = manager.handle(CancelRequested(task.task_id, "c", force=True))
    assert isinstance(cancel, Cancel) and cancel.force
    assert manager.handle(CancelRequested(task.task_id, "again")) == []
    (done,) = manager.handle(WorkerLost(task.task_id, "killed"))
    assert isinstance(done.error, exceptions.TaskCancelledError)


def test_cancelling_a_task_waiting_for_arguments_completes_it_when_they_arrive():
    manager = TaskManager()
    task = spec(1)
    manager.handle(TaskSubmitted(task.task_id, "t", task, []))
    assert kinds(manager.handle(CancelRequested(task.task_id, "c"))) == ["Cancel"]
    (done,) = manager.handle(ArgumentsResolved(task.task_id, "args"))
    assert isinstance(done.error, exceptions.TaskCancelledError)


def test_a_recursive_cancel_reaches_the_children_this_owner_submitted():
    manager = TaskManager()
    parent, child, other = spec(1), spec(2, parent=1), spec(3)
    for task in (parent, child, other):
        submit(manager, task)
    cancelled = manager.handle(CancelRequested(parent.task_id, "c", recursive=True))
    assert {i.spec.task_id for i in cancelled} == {parent.task_id, child.task_id}
    assert all(i.recursive for i in cancelled)


def test_a_scheduling_failure_that_is_not_a_ray_error_says_what_could_not_be_leased():
    manager = TaskManager()
    task = spec(1)
    submit(manager, task)
    (done,) = manager.handle(SchedulingFailed(task.task_id, "lease", OSError("refused")))
    assert isinstance(done.error, exceptions.RaySystemError)
    assert "could not lease a worker for t1()" in str(done.error)


def test_the_log_is_bounded_and_names_each_stimulus():
    manager = TaskManager()
    for n in range(1, 1500):
        submit(manager, spec(n))
    assert len(manager.log) == 1000
    assert manager.log[-1][:3] == ("ArgumentsResolved", (1499).to_bytes(16, "big").hex(), "t")


EVENTS = st.sampled_from(["result_ok", "result_fail", "result_retryable", "worker_lost",
                          "cancel", "dequeued", "sched_failed", "pushed", "args"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), EVENTS), max_size=60),
       st.lists(st.integers(-1, 3), min_size=4, max_size=4))
def test_every_task_completes_exactly_once_whatever_the_order_of_events(steps, retries):
    manager = TaskManager()
    tasks = [spec(n + 1, max_retries=retries[n]) for n in range(4)]
    completions: dict[bytes, list[Complete]] = {t.task_id: [] for t in tasks}
    attempts = {t.task_id: 0 for t in tasks}
    cancelled: set[bytes] = set()
    for task in tasks:
        manager.handle(TaskSubmitted(task.task_id, "t", task, [task.task_id]))

    def feed(event) -> None:
        for instruction in manager.handle(event):
            task_id = instruction.spec.task_id
            assert not completions[task_id], "an instruction for a completed task"
            if isinstance(instruction, Complete):
                completions[task_id].append(instruction)
                assert instruction.submitted == [task_id]  # its arguments go exactly once
                if task_id in cancelled and instruction.result is None:
                    assert isinstance(instruction.error, exceptions.TaskCancelledError) or \
                        isinstance(instruction.error, list)
            elif isinstance(instruction, Retry):
                assert task_id not in cancelled
                attempts[task_id] += 1
                assert instruction.spec.attempt == attempts[task_id]
            else:
                assert isinstance(instruction, (Schedule, Cancel))
        manager.validate_state()

    for index, kind in steps:
        task = tasks[index]
        task_id = task.task_id
        if kind == "args":
            feed(ArgumentsResolved(task_id, "s"))
        elif kind == "pushed":
            feed(Pushed(task_id, "s"))
        elif kind.startswith("result"):
            feed(ResultReceived(task_id, "s", result(task, ok=kind == "result_ok",
                                                     retryable=kind == "result_retryable")))
        elif kind == "worker_lost":
            feed(WorkerLost(task_id, "s"))
        elif kind == "cancel":
            if task_id in manager:
                cancelled.add(task_id)
            feed(CancelRequested(task_id, "s"))
        elif kind == "dequeued":
            if task_id in cancelled:  # only a cancelled task is taken out of its queue
                feed(Dequeued(task_id, "s"))
        else:
            feed(SchedulingFailed(task_id, "s", exceptions.RaySystemError("no")))
    for task in tasks:
        assert len(completions[task.task_id]) <= 1
        assert (task.task_id in manager) != bool(completions[task.task_id])
        limit = task.max_retries
        assert limit == -1 or attempts[task.task_id] <= limit


def test_the_resolver_releases_a_task_once_its_last_distinct_argument_is_ready():
    resolver = DependencyResolver()
    assert resolver.wait_for(b"t0", [])
    assert not resolver.wait_for(b"t1", [b"x", b"y", b"x"])
    assert not resolver.wait_for(b"t2", [b"y"])
    assert resolver.ready(b"x") == []
    assert resolver.ready(b"y") == [b"t1", b"t2"]
    assert resolver.ready(b"y") == [] and len(resolver) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), max_size=4), min_size=1, max_size=8),
       st.permutations(list(range(6))), st.integers(0, 6))
def test_the_resolver_releases_each_task_exactly_once_in_any_order(args, order, repeats):
    resolver = DependencyResolver()
    immediately = {n for n, objs in enumerate(args)
                   if resolver.wait_for(bytes([n]), [bytes([o]) for o in objs])}
    resolver.validate_state()
    released: list[int] = []
    ready: set[int] = set()
    for obj in order + order[:repeats]:  # some objects are reported ready twice
        ready.add(obj)
        for task_id in resolver.ready(bytes([obj])):
            n = task_id[0]
            assert set(args[n]) <= ready  # never before all its arguments are ready
            released.append(n)
        resolver.validate_state()
    assert sorted(released + list(immediately)) == list(range(len(args)))
    assert len(resolver) == 0
