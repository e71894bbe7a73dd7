"""Direct task submission: lease workers from the raylet, push tasks to them, pipelined.

Tasks whose arguments are ready wait in a queue per scheduling key (their resource shape and
scheduling strategy). For each key the submitter keeps one lease request in flight (SPREAD
keys up to ``SPREAD_LEASES_IN_FLIGHT``, so that one request queued behind the owner's own
leases on a node the raylet's stale view showed free does not keep the others from the rest
of the nodes); every granted worker gets tasks pushed straight to it. A lease request goes to
this node's raylet first; when that raylet answers "spill back to node X" the submitter asks
X's raylet, and when it answers "infeasible" (no node of the cluster fits) the submitter warns
and asks again to wait until a node that fits joins (:func:`lease_worker`).

A worker runs one task at a time; the submitter sends it more than one only for functions
whose tasks have proven short, so a burst of tiny tasks is pipelined while long tasks still
spread over all workers. SPREAD tasks are pushed evenly over the queue's workers, two deep while
more leases may come; once the queue has several workers and its lease request has waited
``SPREAD_SETTLE_S`` (no more nodes are free now) eight deep, so that no worker waits for the
owner's next push. A function's calls can change their length: while tasks wait behind
another on a worker, the submitter looks every ``STEAL_AFTER_S``, and a task still running
at two looks in a row has proven long, so the tasks queued behind it are taken back
(``StealTasks``: the worker gives back those that have not started) and leased elsewhere. A
lease with nothing left to run goes back to the raylet that granted it after a short idle
period.

Runs entirely on the core worker's I/O thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .. import _messages as m
from .._rpc import Connection
from ..exceptions import RayError, RaySystemError
from .task_spec import TaskSpec, scheduling_key

__all__ = ["LeaseGrant", "TaskSubmitter", "lease_worker"]

logger = logging.getLogger(__name__)

PIPELINE_DEPTH = 64
SPREAD_PIPELINE_DEPTH = 2  # a SPREAD task's worker has the next one at hand, no more
SPREAD_SETTLE_S = 0.005  # a lease request unanswered this long: no more nodes are free now
SPREAD_SETTLED_DEPTH = 8  # then: enough that a worker never waits for the owner's next push
SPREAD_LEASES_IN_FLIGHT = 4  # lease requests of one SPREAD key under way at once
SHORT_TASK_S = 0.002
STEAL_AFTER_S = 0.01  # a task running at two looks this far apart holds up those behind it
LEASE_IDLE_S = 0.01
LOCALITY_MIN_BYTES = 1 << 20  # arguments smaller than this move faster than a task waits
MAX_SPILLBACKS = 16  # hops of one lease request before it fails (views that disagree)
MAX_LOST_NODES = 8  # unreachable nodes one lease request meets before it fails
LOST_NODE_WAIT_S = 0.02  # then 0.04, 0.08...: the GCS broadcasts a node's death in ~20 ms


@dataclass(slots=True)
class LeaseGrant:
    """A granted lease: the worker, the raylet that granted it and why it is there."""

    lease_id: int
    worker_id: bytes
    address: str
    node_id: bytes
    reason: str
    raylet: Connection


async def lease_worker(local: Connection, connect: Callable[[str], Awaitable[Connection]],
                       request: m.RequestLease,
                       on_infeasible: Callable[[str], None]) -> LeaseGrant:
    """Ask ``local`` (this node's raylet) for a lease, following spillbacks to other nodes'
    raylets. A remote raylet that cannot be reached (its node just died) sends the request
    back to ``local`` after a short wait, by which time the GCS has told ``local``."""
    conn = local
    hops = lost = 0
    while True:
        try:
            reply = await conn.request(request)
        except (ConnectionError, OSError):
            if conn is local:
                raise
            conn, lost = await _back_to_local(local, request, lost)
            continue
        if isinstance(reply, list):
            lease_id, worker_id, address, node_id, reason = reply
            return LeaseGrant(lease_id, worker_id, address, node_id, reason, conn)
        if "infeasible" in reply:
            on_infeasible(reply["infeasible"])
            request.wait_infeasible = True
            continue
        hops += 1
        if hops > MAX_SPILLBACKS:
            raise RaySystemError(f"the lease request for {request.resources} was spilled "
                                 f"back {MAX_SPILLBACKS} times without a node taking it")
        try:
            conn = await connect(reply["spill"])
        except (ConnectionError, OSError, RayError):
            conn, lost = await _back_to_local(local, request, lost)
            continue
        request.spilled, request.reason = True, reply["reason"]


async def _back_to_local(local: Connection, request: m.RequestLease,
                         lost: int) -> tuple[Connection, int]:
    """A node the request was sent to is gone: wait (doubling), then decide again locally."""
    if lost >= MAX_LOST_NODES:
        raise RaySystemError(f"the lease request for {request.resources} was sent to "
                             f"{lost} nodes that could not be reached")
    await asyncio.sleep(LOST_NODE_WAIT_S * 2 ** lost)
    request.spilled = False
    return local, lost + 1


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
    lease_id: int
    worker_id: bytes
    address: str
    node_id: bytes
    key: tuple
    raylet: Connection | None = None  # the raylet that granted the lease
    reason: str = "local"  # why the lease is on its node (the task's placement reason)
    conn: Connection | None = None
    in_flight: dict[bytes, TaskSpec] = field(default_factory=dict)
    functions: dict[bytes, int] = field(default_factory=dict)  # function id -> tasks in flight
    idle_timer: asyncio.TimerHandle | None = None
    steal_timer: asyncio.TimerHandle | None = None
    seen_running: bytes = b""  # the task at the head at the last look for stealing
    returned: bool = False
    on_close: Callable[[asyncio.Future], None] | None = None  # on the (shared) connection

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
class _KeyQueue:
    resources: dict
    strategy: list | None = None
    locality: list | None = None  # [node_id, bytes] of the first task's large arguments
    tasks: deque[TaskSpec] = field(default_factory=deque)
    workers: list[LeasedWorker] = field(default_factory=list)
    leases_pending: int = 0  # lease requests under way
    lease_asked: float = 0.0  # when the newest of them left (loop time)

    @property
    def spread(self) -> bool:
        return self.strategy is not None and self.strategy[0] == "SPREAD"


class TaskSubmitter:
    """Queues, leases and pushes of one owner."""

    def __init__(
        self,
        *,
        raylet: Callable[[], Connection],
        connect: Callable[[str, bytes], asyncio.Future],
        export: Callable[[Connection, TaskSpec], None],
        on_pushed: Callable[[TaskSpec, LeasedWorker], None],
        on_failed: Callable[[TaskSpec, BaseException], None],
        on_worker_lost: Callable[[TaskSpec, LeasedWorker], None],
        on_infeasible: Callable[[TaskSpec, str], None] | None = None,
    ) -> None:
        self._raylet = raylet
        self._connect = connect
        self._export = export
        self._on_pushed = on_pushed
        self._on_failed = on_failed
        self._on_worker_lost = on_worker_lost
        self._on_infeasible = on_infeasible  # a queued task fits no node (yet), and why
        self._queues: dict[tuple, _KeyQueue] = {}
        self._durations: dict[bytes, float] = {}  # function id -> moving average seconds
        self._to_pump: dict[tuple, _KeyQueue] = {}  # queues whose workers freed up
        self._leasing: set[asyncio.Task] = set()  # lease requests under way
        self._loop = asyncio.get_running_loop()
        self.workers_by_task: dict[bytes, LeasedWorker] = {}

    def submit(self, spec: TaskSpec) -> None:
        strategy = spec.strategy
        key = scheduling_key(spec.resources)
        if strategy is not None:
            key = (*key, ("strategy", *strategy))
        locality = argument_locality(spec.resolved)
        if locality is not None:  # tasks whose large arguments are on one node share leases
            key = (*key, ("locality", locality[0]))
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _KeyQueue(spec.resources, strategy, locality)
        queue.tasks.append(spec)
        self._pump(key, queue)

    def task_done(self, task_id: bytes, function_id: bytes, duration: float) -> None:
        """A task's result came back; its worker takes more at ``pump_freed``."""
        worker = self.workers_by_task.pop(task_id, None)
        if worker is None:
            return
        spec = worker.release(task_id)
        if not worker.in_flight and worker.conn is not None:
            worker.conn.awaiting = 0
        avg = self._durations.get(function_id)
        self._durations[function_id] = duration if avg is None else 0.8 * avg + 0.2 * duration
        if spec is not None:
            self._to_pump[worker.key] = self._queues[worker.key]

    def pump_freed(self) -> None:
        """Push queued tasks to the workers a batch of results freed: one push per worker
        per batch, not one per result."""
        to_pump, self._to_pump = self._to_pump, {}
        for key, queue in to_pump.items():
            self._pump(key, queue)
            if not queue.tasks:
                for worker in queue.workers:
                    if not worker.in_flight:
                        self._schedule_return(worker)

    def cancel_queued(self, task_id: bytes) -> TaskSpec | None:
        """Take a not-yet-pushed task out of its queue."""
        for queue in self._queues.values():
            for spec in queue.tasks:
                if spec.task_id == task_id:
                    queue.tasks.remove(spec)
                    return spec
        return None

    # -- pushing --------------------------------------------------------------------------

    def _pump(self, key: tuple, queue: _KeyQueue) -> None:
        tasks = queue.tasks
        if tasks:
            if queue.spread:
                self._pump_evenly(queue)
            else:
                for worker in queue.workers:
                    if worker.conn is None or worker.returned:
                        continue
                    batch = []
                    while tasks and self._can_take(worker, tasks[0], queue):
                        batch.append(self._assign(worker, tasks.popleft()))
                    if batch:
                        self._push(worker, batch)
                    if not tasks:
                        break
        limit = min(len(tasks), SPREAD_LEASES_IN_FLIGHT if queue.spread else 1)
        while queue.leases_pending < limit:
            queue.leases_pending += 1
            queue.lease_asked = self._loop.time()
            lease = self._loop.create_task(self._lease(key, queue))
            self._leasing.add(lease)
            lease.add_done_callback(self._leasing.discard)

    def _pump_evenly(self, queue: _KeyQueue) -> None:
        """One task to each worker that can take one, round after round."""
        tasks = queue.tasks
        batches: dict[LeasedWorker, list[TaskSpec]] = {}
        workers = [w for w in queue.workers if w.conn is not None and not w.returned]
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
            self._push(worker, batch)

    def _assign(self, worker: LeasedWorker, spec: TaskSpec) -> TaskSpec:
        worker.take(spec)
        self.workers_by_task[spec.task_id] = worker
        return spec

    def _can_take(self, worker: LeasedWorker, spec: TaskSpec, queue: _KeyQueue) -> bool:
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
                    and self._loop.time() - queue.lease_asked > SPREAD_SETTLE_S):
                depth = SPREAD_SETTLED_DEPTH
        if len(worker.in_flight) >= depth or not self._is_short(spec.function_id):
            return False
        return all(self._is_short(function_id) for function_id in worker.functions)

    def _is_short(self, function_id: bytes) -> bool:
        avg = self._durations.get(function_id)
        return avg is not None and avg < SHORT_TASK_S

    def _push(self, worker: LeasedWorker, batch: list[TaskSpec]) -> None:
        if worker.idle_timer is not None:
            worker.idle_timer.cancel()
            worker.idle_timer = None
        conn = worker.conn
        for spec in batch:
            self._export(conn, spec)
            self._on_pushed(spec, worker)
        conn.send(m.PushTasks([spec.to_wire() for spec in batch]))
        if not conn.awaiting:  # results are owed: a worker gone silent is pinged, then dropped
            conn.awaiting = 1
        if len(worker.in_flight) > 1 and worker.steal_timer is None:
            worker.seen_running = b""
            worker.steal_timer = self._loop.call_later(STEAL_AFTER_S, self._look, worker)

    # -- stealing back ----------------------------------------------------------------------

    def _look(self, worker: LeasedWorker) -> None:
        """Tasks wait behind another on ``worker``: take them back if it has run since the
        last look (it has proven long), else look again later."""
        worker.steal_timer = None
        if len(worker.in_flight) < 2 or worker.returned or worker.conn is None:
            return
        head = next(iter(worker.in_flight.values()))
        if head.task_id != worker.seen_running:
            worker.seen_running = head.task_id
            worker.steal_timer = self._loop.call_later(STEAL_AFTER_S, self._look, worker)
            return
        avg = self._durations.get(head.function_id, 0.0)
        self._durations[head.function_id] = max(avg, STEAL_AFTER_S)  # no longer short
        waiting = list(worker.in_flight)[1:]
        self._loop.create_task(self._steal(worker, waiting))

    async def _steal(self, worker: LeasedWorker, task_ids: list[bytes]) -> None:
        try:
            stolen = await worker.conn.request(m.StealTasks(task_ids), timeout=10)
        except Exception as exc:  # noqa: BLE001 - the worker went: its loss retries them
            logger.debug("could not take tasks back from %s: %s", worker.address, exc)
            return
        queue = self._queues[worker.key]
        back = [worker.release(task_id) for task_id in stolen if task_id in worker.in_flight]
        for spec in back:
            self.workers_by_task.pop(spec.task_id, None)
        queue.tasks.extendleft(reversed(back))  # first in line again, in their order
        if back:
            self._pump(worker.key, queue)

    # -- leases ---------------------------------------------------------------------------

    async def _lease(self, key: tuple, queue: _KeyQueue) -> None:
        task_s = self._durations.get(queue.tasks[0].function_id, 0.0) if queue.tasks else 0.0
        request = m.RequestLease(queue.resources, repr(key), "task", queue.strategy,
                                 task_s=task_s, locality=queue.locality)
        try:
            grant = await lease_worker(self._raylet(), self._connect_raylet, request,
                                       lambda reason: self._warn_infeasible(queue, reason))
        except Exception as exc:
            queue.leases_pending -= 1
            failed, queue.tasks = list(queue.tasks), deque()
            for spec in failed:
                self._on_failed(spec, exc)
            return
        queue.leases_pending -= 1
        worker = LeasedWorker(grant.lease_id, grant.worker_id, grant.address, grant.node_id,
                              key, grant.raylet, grant.reason)
        address, worker_id = grant.address, grant.worker_id
        if not queue.tasks:
            self._return(worker, failed=False)
            return
        try:
            worker.conn = await self._connect(address, worker_id)
        except Exception as exc:
            logger.warning("leased worker at %s unreachable: %s", address, exc)
            self._return(worker, failed=True)
            self._pump(key, queue)
            return
        worker.on_close = lambda _: self._worker_lost(worker)
        worker.conn.closed.add_done_callback(worker.on_close)
        queue.workers.append(worker)
        self._pump(key, queue)
        if not worker.in_flight:
            self._schedule_return(worker)

    def _connect_raylet(self, address: str) -> Awaitable[Connection]:
        return self._connect(address, None)

    def _warn_infeasible(self, queue: _KeyQueue, reason: str) -> None:
        logger.warning("a task cannot be scheduled yet: %s. Add a node that has these "
                       "resources (cellfleet start --address ..., or Cluster.add_node).", reason)
        if self._on_infeasible is not None:
            for spec in queue.tasks:
                self._on_infeasible(spec, reason)

    def _schedule_return(self, worker: LeasedWorker) -> None:
        if worker.idle_timer is None and not worker.returned:
            worker.idle_timer = self._loop.call_later(LEASE_IDLE_S, self._return_if_idle, worker)

    def _return_if_idle(self, worker: LeasedWorker) -> None:
        worker.idle_timer = None
        if not worker.in_flight and not self._queues[worker.key].tasks:
            self._return(worker, failed=False)

    def _return(self, worker: LeasedWorker, *, failed: bool) -> None:
        if worker.returned:
            return
        worker.returned = True
        if worker.on_close is not None:  # the connection is cached: leases must not pile up
            worker.conn.closed.remove_done_callback(worker.on_close)
            worker.on_close = None
        queue = self._queues.get(worker.key)
        if queue is not None and worker in queue.workers:
            queue.workers.remove(worker)
        raylet = worker.raylet or self._raylet()
        if raylet is not None and raylet.is_open:
            raylet.send(m.ReturnLease(worker.lease_id, failed))

    def _worker_lost(self, worker: LeasedWorker) -> None:
        """The connection to a leased worker closed: its in-flight tasks did not finish.

        A worker runs its tasks one at a time in push order, so only the first was running;
        the ones queued behind it never started and go back in line as they are.
        """
        lost = list(worker.in_flight.values())
        worker.in_flight.clear()
        worker.functions.clear()
        self._return(worker, failed=True)
        for spec in lost:
            self.workers_by_task.pop(spec.task_id, None)
        if lost:
            self._on_worker_lost(lost[0], worker)
        for spec in lost[1:]:
            self.submit(spec)

    def shutdown(self) -> None:
        for lease in self._leasing:
            lease.cancel()
        for queue in self._queues.values():
            for worker in list(queue.workers):
                self._return(worker, failed=False)
