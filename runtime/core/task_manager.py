"""The owner's task manager: every task this process submitted, from submission to its outcome.

Ray's TaskManager, as a state class with no I/O. The core worker feeds it events (a task was
submitted, its arguments resolved, a result came back, its worker died, scheduling failed, a
cancel was asked for) and carries out the instructions it answers with (schedule the task,
retry it, complete it with a result or an error). It decides what the owner does about each
task: whether a failure is retried (``max_retries``, retryable errors only, never after a
cancel), that a cancelled task's outcome is a ``TaskCancelledError``, and that a task is
completed exactly once, whatever arrives late (a result after a cancel, a second result of a
retried attempt, a worker's death after its result).

Every event carries a stimulus id (what caused it: a message, a call); the manager keeps a
bounded log of the events it handled and what it answered, and ``validate_state`` checks its
invariants, as dask's worker state machine does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from .. import exceptions
from .task_spec import TaskResult, TaskSpec

__all__ = [
    "ArgumentsResolved", "Cancel", "CancelRequested", "Complete", "Dequeued", "Instruction",
    "Pushed", "RebuildArgument", "ResultReceived", "Retry", "Schedule", "SchedulingFailed",
    "TaskEvent", "TaskManager", "TaskSubmitted", "WorkerLost",
]

LOG_LENGTH = 1000  # events kept for debugging
MAX_ARGUMENT_REBUILDS = 100  # times one task may wait for a lost argument to be made again


# -- events -------------------------------------------------------------------------------


@dataclass(slots=True)
class TaskEvent:
    task_id: bytes
    stimulus_id: str = ""


@dataclass(slots=True)
class TaskSubmitted(TaskEvent):
    spec: TaskSpec | None = None
    submitted: list[bytes] = field(default_factory=list)  # objects kept alive until the end


@dataclass(slots=True)
class ArgumentsResolved(TaskEvent):
    """Every argument is ready; ``error`` is the error payload of the first failed one."""

    error: list | None = None


@dataclass(slots=True)
class Pushed(TaskEvent):
    """The task left for a worker (or an actor)."""


@dataclass(slots=True)
class ResultReceived(TaskEvent):
    result: TaskResult | None = None


@dataclass(slots=True)
class WorkerLost(TaskEvent):
    """The connection to the worker running the task closed before its result came."""


@dataclass(slots=True)
class SchedulingFailed(TaskEvent):
    """The task cannot run: no worker could be leased, or its actor is dead."""

    error: BaseException | None = None


@dataclass(slots=True)
class CancelRequested(TaskEvent):
    recursive: bool = False
    force: bool = False  # kill the worker, not only interrupt the task


@dataclass(slots=True)
class Dequeued(TaskEvent):
    """A cancelled task was taken out of a queue before it left: it will never run."""


# -- instructions -------------------------------------------------------------------------


@dataclass(slots=True)
class Instruction:
    spec: TaskSpec


@dataclass(slots=True)
class Schedule(Instruction):
    """Arguments are ready: hand the task to the submitter (or the actor's queue)."""


@dataclass(slots=True)
class Retry(Instruction):
    """Submit the task again; ``spec.attempt`` is already the new attempt's number."""


@dataclass(slots=True)
class RebuildArgument(Instruction):
    """The task did not run: every copy of argument ``object_id`` was lost. Have it made
    again (by its owner), then resolve the task's arguments anew (``ArgumentsResolved``)."""

    object_id: bytes = b""


@dataclass(slots=True)
class Cancel(Instruction):
    """Stop the task wherever it is: out of a queue (then feed ``Dequeued``) or on its worker."""

    force: bool = False
    recursive: bool = False


@dataclass(slots=True)
class Complete(Instruction):
    """The task's outcome: fill its returns from ``result`` or with ``error`` (an exception,
    or an error payload an argument carried), then release ``submitted``."""

    result: TaskResult | None = None
    error: BaseException | list | None = None
    submitted: list[bytes] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _Task:
    spec: TaskSpec
    submitted: list[bytes]
    state: str = "WAITING_FOR_ARGS"  # -> SCHEDULED -> PUSHED (-> WAITING_FOR_ARGS: rebuild)
    cancelled: bool = False
    rebuilds: int = 0  # arguments it waited to have made again


class TaskManager:
    """The tasks of one owner that have not completed yet."""

    def __init__(self) -> None:
        self.tasks: dict[bytes, _Task] = {}
        self.log: deque[tuple[str, str, str, list[str]]] = deque(maxlen=LOG_LENGTH)
        self._handlers = {
            TaskSubmitted: self._submitted,
            ArgumentsResolved: self._arguments_resolved,
            Pushed: self._pushed,
            ResultReceived: self._result_received,
            WorkerLost: self._worker_lost,
            SchedulingFailed: self._scheduling_failed,
            CancelRequested: self._cancel_requested,
            Dequeued: self._dequeued,
        }

    # -- queries ----------------------------------------------------------------------

    def __contains__(self, task_id: bytes) -> bool:
        return task_id in self.tasks

    def __len__(self) -> int:
        return len(self.tasks)

    def specs(self) -> Iterator[TaskSpec]:
        """The specs of the tasks not completed yet."""
        return (task.spec for task in list(self.tasks.values()))

    def spec(self, task_id: bytes) -> TaskSpec | None:
        task = self.tasks.get(task_id)
        return task.spec if task is not None else None

    def is_cancelled(self, task_id: bytes) -> bool:
        task = self.tasks.get(task_id)
        return task is not None and task.cancelled

    # -- events -----------------------------------------------------------------------

    def handle(self, *events: TaskEvent) -> list[Instruction]:
        """Apply events in order; the instructions to carry out, in order."""
        out: list[Instruction] = []
        for event in events:
            made = self._handlers[type(event)](event)
            self.log.append((type(event).__name__, event.task_id.hex(), event.stimulus_id,
                             [type(i).__name__ for i in made]))
            out.extend(made)
        return out

    def _submitted(self, event: TaskSubmitted) -> list[Instruction]:
        self.tasks[event.task_id] = _Task(event.spec, event.submitted)
        return []

    def _arguments_resolved(self, event: ArgumentsResolved) -> list[Instruction]:
        task = self.tasks.get(event.task_id)
        if task is None or task.state != "WAITING_FOR_ARGS":
            return []  # completed (cancelled) while its arguments were pending
        if task.cancelled:
            return [self._complete(task, error=_cancelled(task))]
        if event.error is not None:
            return [self._complete(task, error=event.error)]  # failures propagate downstream
        task.state = "SCHEDULED"
        return [Schedule(task.spec)]

    def _pushed(self, event: Pushed) -> list[Instruction]:
        task = self.tasks.get(event.task_id)
        if task is not None:
            task.state = "PUSHED"
        return []

    def _result_received(self, event: ResultReceived) -> list[Instruction]:
        task = self.tasks.get(event.task_id)
        if task is None:
            return []  # a late or repeated result: the task has its outcome already
        result = event.result
        spec = task.spec
        if (result.lost_argument and not spec.actor_id and not task.cancelled
                and task.rebuilds < MAX_ARGUMENT_REBUILDS):
            task.rebuilds += 1
            task.state = "WAITING_FOR_ARGS"
            return [RebuildArgument(spec, result.lost_argument)]
        if (not result.ok and result.retryable and not spec.method and not spec.actor_id
                and self._may_retry(task)):
            return [self._retry(task)]
        return [self._complete(task, result=result)]

    def _worker_lost(self, event: WorkerLost) -> list[Instruction]:
        task = self.tasks.get(event.task_id)
        if task is None:
            return []
        if task.cancelled:
            return [self._complete(task, error=_cancelled(task))]
        if self._may_retry(task):
            return [self._retry(task)]
        spec = task.spec
        return [self._complete(task, error=exceptions.WorkerCrashedError(
            f"The worker running {spec.name}() died unexpectedly "
            f"(after {spec.attempt + 1} attempt(s); max_retries={spec.max_retries}). "
            "It may have run out of memory or been killed; check the worker log in the "
            "session's logs directory."
        ))]

    def _scheduling_failed(self, event: SchedulingFailed) -> list[Instruction]:
        task = self.tasks.get(event.task_id)
        if task is None:
            return []
        error = event.error
        if task.cancelled:
            error = _cancelled(task)  # what the caller asked for, whatever else went wrong
        elif not isinstance(error, exceptions.RayError):
            error = exceptions.RaySystemError(
                f"could not lease a worker for {task.spec.name}(): {error}")
        return [self._complete(task, error=error)]

    def _cancel_requested(self, event: CancelRequested) -> list[Instruction]:
        task = self.tasks.get(event.task_id)
        if task is None or task.cancelled:
            return []  # finished already, not ours, or asked before
        task.cancelled = True
        out: list[Instruction] = []
        if event.recursive:
            for child in [t for t in self.tasks.values()
                          if t.spec.parent_task_id == event.task_id]:
                out += self._cancel_requested(
                    CancelRequested(child.spec.task_id, event.stimulus_id, True, event.force))
        # Out of its queue if it has not left (then Dequeued ends it), else at its worker; a
        # task whose arguments are still pending ends when they arrive.
        out.append(Cancel(task.spec, event.force, event.recursive))
        return out

    def _dequeued(self, event: Dequeued) -> list[Instruction]:
        task = self.tasks.get(event.task_id)
        if task is None:
            return []
        return [self._complete(task, error=_cancelled(task))]

    # -- decisions --------------------------------------------------------------------

    def _may_retry(self, task: _Task) -> bool:
        spec = task.spec
        if task.cancelled:
            return False
        return spec.max_retries == -1 or spec.attempt < spec.max_retries

    def _retry(self, task: _Task) -> Retry:
        task.spec.attempt += 1
        task.state = "SCHEDULED"
        return Retry(task.spec)

    def _complete(self, task: _Task, *, result: TaskResult | None = None,
                  error: BaseException | list | None = None) -> Complete:
        del self.tasks[task.spec.task_id]
        return Complete(task.spec, result, error, task.submitted)

    def validate_state(self) -> None:
        """Check the invariants (tests call this after every step)."""
        for task_id, task in self.tasks.items():
            assert task.spec.task_id == task_id
            assert task.state in ("WAITING_FOR_ARGS", "SCHEDULED", "PUSHED"), task.state
            retries = task.spec.max_retries
            assert retries == -1 or task.spec.attempt <= retries, (task.spec.attempt, retries)


def _cancelled(task: _Task) -> exceptions.TaskCancelledError:
    return exceptions.TaskCancelledError(task.spec.task_id.hex())
