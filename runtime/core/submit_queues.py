"""Which queued task goes to which leased worker, and when to lease, steal back or return a
worker: the owner's task submission decisions, as an I/O-free state class.

Tasks whose arguments are ready wait in a queue per scheduling key (their resource shape,
strategy and, for large arguments, the node holding them). Each key keeps one lease request
under way (a burst of short SPREAD tasks up to ``SPREAD_LEASES_IN_FLIGHT``, so that one queued
behind the owner's own leases on a node a raylet's stale view showed free does not keep the
others from the rest of the nodes; when a SPREAD queue empties, its requests still under way
are cancelled, so that the next burst asks afresh).

A worker runs one task at a time; it is sent more than one only for functions whose tasks have
proven short, so a burst of tiny tasks is pipelined (``PIPELINE_DEPTH``) while long tasks still
spread over all workers. SPREAD tasks are handed out evenly over the queue's workers, two deep
while more leases may come; once the queue has several workers and its newest lease request
has waited ``SPREAD_SETTLE_S`` (no more nodes are free now), eight deep, so that no worker waits
for the owner's next push. A function's calls can change their length: while tasks wait behind
another on a worker, the owner looks every ``STEAL_AFTER_S``, and a task still running at two
looks in a row has proven long, so the tasks queued behind it are taken back (the worker gives
back those that have not started) and handed out again. A lease with nothing left to run goes
back after ``LEASE_IDLE_S`` idle.

:class:`SubmitQueues` is fed events (a task submitted, a lease granted or failed, a batch of
results, a look, tasks given back, an idle check, a worker lost) and answers with actions
(:class:`Push`, :class:`AskLease`, :class:`CancelLeases`, :class:`Connect`,
:class:`ReturnLease`, :class:`FailTasks`, :class:`LostTask`, :class:`Look`, :class:`IdleCheck`,
:class:`Steal`) that ``core/submitter.py`` carries out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .task_spec import TaskSpec, scheduling_key

__all__ = ["AskLease", "CancelLeases", "Connect", "FailTasks", "IdleCheck", "LeasedWorker",
           "Look", "LostTask", "Push", "ReturnLease", "Steal", "SubmitQueues",
           "argument_locality"]

PIPELINE_DEPTH = 64
SPREAD_PIPELINE_DEPTH = 2  # a SPREAD task's worker has the next one at hand, no more
SPREAD_SETTLE_S = 0.005  # a lease request unanswered this long: no more nodes are free now
SPREAD_SETTLED_DEPTH = 8  # then: enough that a worker never waits for the owner's next push
SPREAD_LEASES_IN_FLIGHT = 4  # lease requests of one SPREAD key under way at once
SHORT_TASK_S = 0.002
STEAL_AFTER_S = 0.01  # a task running at two looks this far apart holds up those behind it
LEASE_IDLE_S = 0.01
LOCALITY_MIN_BYTES = 1 << 20  # arguments smaller than this move faster than a task waits


def argument_locality(resolved: list) -> list | None:
    """``[node_id, bytes]`` of the node holding most of a task's argument bytes in shared
    memory, when that is at least ``LOCALITY_MIN_BYTES`` (else placement ignores locality)."""
    held: dict[bytes, int] = {}
    for payload in resolved:
        if payload[0] == "s":
            held[payload[3]] = held.get(payload[3], 0) + payload[2]
    if not held:
        return None
    node_id, size = max(held.items(), key=lambda item: item[1])
    return [node_id, size] if size >= LOCALITY_MIN_BYTES else None


@dataclass(slots=True, eq=False)
class LeasedWorker:
    """A worker leased for one scheduling key, and the tasks pushed to it.

    ``conn``, ``raylet`` and ``on_close`` are the submitter's handles (its connection, the
    raylet that granted the lease, the callback on the connection); nothing here reads them.
    """

    lease_id: int
    worker_id: bytes
    address: str
    node_id: bytes
    key: tuple
    raylet: Any = None
    reason: str = "local"  # why the lease is on its node (the task's placement reason)
    conn: Any = None
    in_flight: dict[bytes, TaskSpec] = field(default_factory=dict)  # in push order
    functions: dict[bytes, int] = field(default_factory=dict)  # function id -> tasks in flight
    pushes: int = 0  # how many pushes it got: an idle check from before the last one is void
    idle_check: bool = False  # an idle check is due
    looking: bool = False  # a look for stealing is due
    seen_running: bytes = b""  # the task at the head at the last look
    returned: bool = False
    on_close: Callable[[Any], None] | None = None

    def take(self, spec: TaskSpec) -> None:
        """``spec`` is pushed to this worker."""
        self.in_flight[spec.task_id] = spec
        self.functions[spec.function_id] = self.functions.get(spec.function_id, 0) + 1

    def release(self, task_id: bytes) -> TaskSpec | None:
        """``task_id`` is no longer this worker's (it ended, or was taken back)."""
        spec = self.in_flight.pop(task_id, None)
        if spec is not None:
            left = self.functions[spec.function_id] - 1
            if left:
                self.functions[spec.function_id] = left
            else:
                del self.functions[spec.function_id]
        return spec


@dataclass(slots=True, eq=False)
class KeyQueue:
    """The tasks of one scheduling key waiting for a worker, and the workers leased for it."""

    resources: dict
    strategy: list | None = None
    locality: list | None = None  # [node_id, bytes] of the first task's large arguments
    tasks: deque[TaskSpec] = field(default_factory=deque)
    workers: list[LeasedWorker] = field(default_factory=list)  # connected, not returned
    asks: set[int] = field(default_factory=set)  # lease requests under way, not cancelled
    lease_asked: float = 0.0  # when the newest of them left

    @property
    def leases_pending(self) -> int:
        return len(self.asks)

    @property
    def spread(self) -> bool:
        return self.strategy is not None and self.strategy[0] == "SPREAD"


# -- actions ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Push:
    """Send ``batch`` to ``worker`` in one message (they are in its ``in_flight`` already)."""

    worker: LeasedWorker
    batch: list[TaskSpec]


@dataclass(slots=True)
class AskLease:
    """Ask for a worker for ``key``; answer with ``lease_granted`` or ``lease_failed``."""

    key: tuple
    queue: KeyQueue
    task_s: float  # the queue's mean task time so far, for the raylets' wait estimates
    ask_id: int


@dataclass(slots=True)
class CancelLeases:
    """The queue of ``key`` emptied: these lease requests are not needed any more (answer
    each with ``lease_cancelled``, or as it was answered anyway)."""

    key: tuple
    ask_ids: list[int]


@dataclass(slots=True)
class Connect:
    """Connect to the granted ``worker``; answer with ``worker_connected`` or
    ``worker_unreachable``."""

    worker: LeasedWorker


@dataclass(slots=True)
class ReturnLease:
    """Give ``worker``'s lease back to the raylet that granted it (``failed``: it is broken)."""

    worker: LeasedWorker
    failed: bool


@dataclass(slots=True)
class FailTasks:
    """These tasks cannot be scheduled: end them with ``error``."""

    specs: list[TaskSpec]
    error: BaseException


@dataclass(slots=True)
class LostTask:
    """The task that was running on ``worker`` when it was lost: retry it or fail it."""

    spec: TaskSpec
    worker: LeasedWorker


@dataclass(slots=True)
class Look:
    """Call ``look(worker)`` after ``STEAL_AFTER_S``."""

    worker: LeasedWorker


@dataclass(slots=True)
class IdleCheck:
    """Call ``idle_expired(worker, pushes)`` after ``LEASE_IDLE_S``."""

    worker: LeasedWorker
    pushes: int


@dataclass(slots=True)
class Steal:
    """Ask ``worker`` to give back those of ``task_ids`` it has not started; answer with
    ``given_back``."""

    worker: LeasedWorker
    task_ids: list[bytes]


class SubmitQueues:
    """The queues, leases and pushes of one owner, as decisions (no I/O).

    ``clock`` gives the time in seconds (the event loop's, in the submitter).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.queues: dict[tuple, KeyQueue] = {}
        self.durations: dict[bytes, float] = {}  # function id -> moving average seconds
        self.workers_by_task: dict[bytes, LeasedWorker] = {}
        self._to_pump: dict[tuple, KeyQueue] = {}  # queues whose workers freed up
        self._next_ask = 0

    # -- events ---------------------------------------------------------------------------

    def submit(self, spec: TaskSpec) -> list:
        """A task whose arguments are ready."""
        strategy = spec.strategy
        key = scheduling_key(spec.resources)
        if strategy is not None:
            key = (*key, ("strategy", *strategy))
        locality = argument_locality(spec.resolved)
        if locality is not None:  # tasks whose large arguments are on one node share leases
            key = (*key, ("locality", locality[0]))
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = KeyQueue(spec.resources, strategy, locality)
        queue.tasks.append(spec)
        return self._pump(key, queue)

    def task_done(self, task_id: bytes, function_id: bytes, duration: float,
                  ) -> LeasedWorker | None:
        """A task's result came back: its worker, which takes more at ``pump_freed``."""
        worker = self.workers_by_task.pop(task_id, None)
        if worker is None:
            return None
        spec = worker.release(task_id)
        avg = self.durations.get(function_id)
        self.durations[function_id] = duration if avg is None else 0.8 * avg + 0.2 * duration
        if spec is not None:
            self._to_pump[worker.key] = self.queues[worker.key]
        return worker

    def pump_freed(self) -> list:
        """The end of a batch of results: the workers it freed take more, one push each."""
        to_pump, self._to_pump = self._to_pump, {}
        actions: list = []
        for key, queue in to_pump.items():
            actions += self._pump(key, queue)
            if not queue.tasks:
                for worker in queue.workers:
                    if not worker.in_flight:
                        actions += self._idle(worker)
        return actions

    def cancel_queued(self, task_id: bytes) -> TaskSpec | None:
        """Take a not-yet-pushed task out of its queue."""
        for queue in self.queues.values():
            for spec in queue.tasks:
                if spec.task_id == task_id:
                    queue.tasks.remove(spec)
                    return spec
        return None

    def tasks_of(self, key: tuple) -> list[TaskSpec]:
        """The tasks waiting in ``key``'s queue."""
        return list(self.queues[key].tasks)

    def lease_failed(self, key: tuple, ask_id: int, error: BaseException) -> list:
        """A lease request failed for good: the key's waiting tasks fail with its error (not
        when the request had been cancelled: the tasks queued since have their own)."""
        queue = self.queues[key]
        if ask_id not in queue.asks:
            return []
        queue.asks.discard(ask_id)
        failed, queue.tasks = list(queue.tasks), deque()
        return [FailTasks(failed, error)] if failed else []

    def lease_cancelled(self, key: tuple, ask_id: int) -> None:
        """A cancelled lease request ended without a lease."""
        self.queues[key].asks.discard(ask_id)

    def lease_granted(self, worker: LeasedWorker, ask_id: int) -> list:
        """A lease request was granted: connect to the worker, or give it back at once when
        its queue emptied meanwhile (a cancelled request's lease is used when tasks came
        since)."""
        queue = self.queues[worker.key]
        queue.asks.discard(ask_id)
        if queue.tasks:
            return [Connect(worker)]
        return [self._return(worker, failed=False)]

    def worker_connected(self, worker: LeasedWorker) -> list:
        """The granted worker answered: it takes tasks."""
        queue = self.queues[worker.key]
        queue.workers.append(worker)
        actions = self._pump(worker.key, queue)
        if not worker.in_flight:
            actions += self._idle(worker)
        return actions

    def worker_unreachable(self, worker: LeasedWorker) -> list:
        """The granted worker could not be reached: its lease goes back broken, and the
        queue asks again."""
        return [self._return(worker, failed=True), *self._pump(worker.key,
                                                               self.queues[worker.key])]

    def look(self, worker: LeasedWorker) -> list:
        """Tasks wait behind another on ``worker``: take them back if the one running has run
        since the last look (it has proven long), else look again later."""
        worker.looking = False
        if len(worker.in_flight) < 2 or worker.returned:
            return []
        head = next(iter(worker.in_flight.values()))
        if head.task_id != worker.seen_running:
            worker.seen_running = head.task_id
            worker.looking = True
            return [Look(worker)]
        avg = self.durations.get(head.function_id, 0.0)
        self.durations[head.function_id] = max(avg, STEAL_AFTER_S)  # no longer short
        return [Steal(worker, list(worker.in_flight)[1:])]

    def given_back(self, worker: LeasedWorker, task_ids: list[bytes]) -> list:
        """``worker`` gave back these tasks, which it had not started: first in line again,
        in their order."""
        back = [worker.release(task_id) for task_id in task_ids if task_id in worker.in_flight]
        if not back:
            return []
        for spec in back:
            self.workers_by_task.pop(spec.task_id, None)
        queue = self.queues[worker.key]
        queue.tasks.extendleft(reversed(back))
        return self._pump(worker.key, queue)

    def idle_expired(self, worker: LeasedWorker, pushes: int) -> list:
        """An idle check came due: the lease goes back if nothing was pushed to it since and
        its queue is empty."""
        worker.idle_check = False
        if worker.returned or worker.in_flight or self.queues[worker.key].tasks:
            return []
        if pushes != worker.pushes:  # it worked since: idle for a full period from now
            return self._idle(worker)
        return [self._return(worker, failed=False)]

    def worker_lost(self, worker: LeasedWorker) -> list:
        """The connection to a leased worker closed: its in-flight tasks did not finish.

        A worker runs its tasks one at a time in push order, so only the first was running;
        the ones queued behind it never started and go back in line as they are.
        """
        lost = list(worker.in_flight.values())
        worker.in_flight.clear()
        worker.functions.clear()
        actions: list = [] if worker.returned else [self._return(worker, failed=True)]
        for spec in lost:
            self.workers_by_task.pop(spec.task_id, None)
        if lost:
            actions.append(LostTask(lost[0], worker))
        for spec in lost[1:]:
            actions += self.submit(spec)
        return actions

    def shutdown(self) -> list:
        """Every lease goes back."""
        return [self._return(worker, failed=False)
                for queue in self.queues.values() for worker in list(queue.workers)]

    # -- decisions ------------------------------------------------------------------------

    def _pump(self, key: tuple, queue: KeyQueue) -> list:
        tasks = queue.tasks
        actions: list = []
        if tasks:
            if queue.spread:
                self._pump_evenly(queue, actions)
            else:
                for worker in queue.workers:
                    batch = []
                    while tasks and self._can_take(worker, tasks[0], queue):
                        batch.append(self._assign(worker, tasks.popleft()))
                    if batch:
                        self._push(worker, batch, actions)
                    if not tasks:
                        break
        limit = min(len(tasks), self._asks_in_flight(queue)) if tasks else 0
        if len(queue.asks) < limit:
            task_s = self.durations.get(tasks[0].function_id, 0.0)
            queue.lease_asked = self._clock()
            while len(queue.asks) < limit:
                self._next_ask += 1
                queue.asks.add(self._next_ask)
                actions.append(AskLease(key, queue, task_s, self._next_ask))
        elif not tasks and queue.asks and queue.spread:
            # Requests left waiting behind the owner's own leases (on nodes a stale view
            # showed free) would take the next burst's places: the next burst asks afresh.
            actions.append(CancelLeases(key, sorted(queue.asks)))
            queue.asks.clear()
        return actions

    def _pump_evenly(self, queue: KeyQueue, actions: list) -> None:
        """One task to each worker that can take one, round after round."""
        tasks = queue.tasks
        batches: dict[LeasedWorker, list[TaskSpec]] = {}
        workers = list(queue.workers)
        while tasks and workers:
            took = []
            for worker in workers:
                if not tasks:
                    break
                if self._can_take(worker, tasks[0], queue):
                    batches.setdefault(worker, []).append(self._assign(worker, tasks.popleft()))
                    took.append(worker)
            workers = took
        for worker, batch in batches.items():
            self._push(worker, batch, actions)

    def _assign(self, worker: LeasedWorker, spec: TaskSpec) -> TaskSpec:
        worker.take(spec)
        self.workers_by_task[spec.task_id] = worker
        return spec

    def _push(self, worker: LeasedWorker, batch: list[TaskSpec], actions: list) -> None:
        worker.pushes += 1
        actions.append(Push(worker, batch))
        if len(worker.in_flight) > 1 and not worker.looking:
            worker.seen_running = b""
            worker.looking = True
            actions.append(Look(worker))

    def _can_take(self, worker: LeasedWorker, spec: TaskSpec, queue: KeyQueue) -> bool:
        """An idle worker takes any task; a busy one only short tasks behind short ones. A
        SPREAD task goes to a busy worker only as the one next in line behind a short one
        while the queue's lease request is young: the rest wait in the queue, which keeps
        asking for leases, so they spread over the nodes the leases go to."""
        if not worker.in_flight:
            return True
        depth = PIPELINE_DEPTH
        if queue.spread:
            depth = SPREAD_PIPELINE_DEPTH
            if (queue.leases_pending and len(queue.workers) > 1
                    and self._clock() - queue.lease_asked > SPREAD_SETTLE_S):
                depth = SPREAD_SETTLED_DEPTH
        if len(worker.in_flight) >= depth or not self._is_short(spec.function_id):
            return False
        return all(self._is_short(function_id) for function_id in worker.functions)

    def _asks_in_flight(self, queue: KeyQueue) -> int:
        """How many lease requests the queue keeps under way: one, but several for a burst
        of short SPREAD tasks (tasks not known short each take a worker of their own, and
        one request at a time keeps the raylets' round robin exact)."""
        if queue.spread and self._is_short(queue.tasks[0].function_id):
            return SPREAD_LEASES_IN_FLIGHT
        return 1

    def _is_short(self, function_id: bytes) -> bool:
        avg = self.durations.get(function_id)
        return avg is not None and avg < SHORT_TASK_S

    def _idle(self, worker: LeasedWorker) -> list:
        if worker.idle_check or worker.returned:
            return []
        worker.idle_check = True
        return [IdleCheck(worker, worker.pushes)]

    def _return(self, worker: LeasedWorker, *, failed: bool) -> ReturnLease:
        worker.returned = True
        queue = self.queues.get(worker.key)
        if queue is not None and worker in queue.workers:
            queue.workers.remove(worker)
        return ReturnLease(worker, failed)
