"""Direct task submission: lease workers from the raylets, push tasks to them, pipelined.

The decisions (which task goes to which worker, when to ask for a lease, steal tasks back or
give a lease back) are :class:`~.submit_queues.SubmitQueues`'s; :class:`TaskSubmitter` carries
out its actions on the core worker's I/O thread: lease requests, connections, ``PushTasks``,
``StealTasks``, ``ReturnLease`` and the timers behind looks and idle checks.

A lease request goes to this node's raylet first; when that raylet answers "spill back to node
X" the submitter asks X's raylet, and when it answers "infeasible" (no node of the cluster
fits) the submitter warns and asks again to wait until a node that fits joins
(:func:`lease_worker`, shared with actor creation).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .. import _messages as m
from .._rpc import Connection
from ..exceptions import RayError, RaySystemError
from .submit_queues import (
    LEASE_IDLE_S,
    STEAL_AFTER_S,
    AskLease,
    CancelLeases,
    Connect,
    FailTasks,
    IdleCheck,
    LeasedWorker,
    Look,
    LostTask,
    Push,
    ReturnLease,
    Steal,
    SubmitQueues,
)
from .task_spec import TaskSpec

__all__ = ["LeaseGrant", "TaskSubmitter", "lease_worker"]

logger = logging.getLogger(__name__)

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


@dataclass(slots=True, eq=False)
class LeaseAttempt:
    """Where a lease request is now (the raylet it waits at), so that it can be cancelled."""

    conn: Connection | None = None
    cancelled: bool = False

    def cancel(self, scheduling_key: str) -> None:
        """Tell the raylet the request waits at that it is not needed any more; a spill
        reply already under way is not followed."""
        self.cancelled = True
        if self.conn is not None and self.conn.is_open:
            self.conn.send(m.CancelLeaseRequests(scheduling_key))


async def lease_worker(local: Connection, connect: Callable[[str], Awaitable[Connection]],
                       request: m.RequestLease, on_infeasible: Callable[[str], None],
                       attempt: LeaseAttempt | None = None) -> LeaseGrant | None:
    """Ask ``local`` (this node's raylet) for a lease, following spillbacks to other nodes'
    raylets. A remote raylet that cannot be reached (its node just died) sends the request
    back to ``local`` after a short wait, by which time the GCS has told ``local``. None when
    ``attempt`` was cancelled first."""
    attempt = attempt or LeaseAttempt()
    conn = local
    hops = lost = 0
    while not attempt.cancelled:
        attempt.conn = conn
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
        if "cancelled" in reply:
            break
        if "infeasible" in reply:
            on_infeasible(reply["infeasible"])
            request.wait_infeasible = True
            continue
        hops += 1
        if hops > MAX_SPILLBACKS:
            raise RaySystemError(f"the lease request for {request.resources} was spilled "
                                 f"back {MAX_SPILLBACKS} times without a node taking it")
        if attempt.cancelled:
            break
        try:
            conn = await connect(reply["spill"])
        except (ConnectionError, OSError, RayError):
            conn, lost = await _back_to_local(local, request, lost)
            continue
        request.spilled, request.reason = True, reply["reason"]
    return None


async def _back_to_local(local: Connection, request: m.RequestLease,
                         lost: int) -> tuple[Connection, int]:
    """A node the request was sent to is gone: wait (doubling), then decide again locally."""
    if lost >= MAX_LOST_NODES:
        raise RaySystemError(f"the lease request for {request.resources} was sent to "
                             f"{lost} nodes that could not be reached")
    await asyncio.sleep(LOST_NODE_WAIT_S * 2 ** lost)
    request.spilled = False
    return local, lost + 1



class TaskSubmitter:
    """Carries out the submission decisions of one owner (:class:`SubmitQueues`)."""

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
        self._loop = asyncio.get_running_loop()
        self._state = SubmitQueues(self._loop.time)
        self._leasing: set[asyncio.Task] = set()  # lease requests and connects under way
        self._attempts: dict[int, LeaseAttempt] = {}  # ask id -> where its request waits
        self.workers_by_task = self._state.workers_by_task

    def submit(self, spec: TaskSpec) -> None:
        """Queue a task whose arguments are ready."""
        actions = self._state.submit(spec)
        if actions:
            self._carry_out(actions)

    def task_done(self, task_id: bytes, function_id: bytes, duration: float) -> None:
        """A task's result came back; its worker takes more at ``pump_freed``."""
        worker = self._state.task_done(task_id, function_id, duration)
        if worker is not None and not worker.in_flight and worker.conn is not None:
            worker.conn.awaiting = 0

    def pump_freed(self) -> None:
        """Push queued tasks to the workers a batch of results freed: one push per worker
        per batch, not one per result."""
        actions = self._state.pump_freed()
        if actions:
            self._carry_out(actions)

    def cancel_queued(self, task_id: bytes) -> TaskSpec | None:
        """Take a not-yet-pushed task out of its queue."""
        return self._state.cancel_queued(task_id)

    def shutdown(self) -> None:
        for lease in self._leasing:
            lease.cancel()
        self._carry_out(self._state.shutdown())

    # -- carrying out -----------------------------------------------------------------------

    def _carry_out(self, actions: list) -> None:
        for action in actions:
            kind = type(action)
            if kind is Push:
                self._push(action.worker, action.batch)
            elif kind is AskLease:
                attempt = self._attempts[action.ask_id] = LeaseAttempt()
                self._start(self._lease(action, attempt))
            elif kind is CancelLeases:
                self._cancel_leases(action)
            elif kind is Connect:
                self._start(self._connect_worker(action.worker))
            elif kind is ReturnLease:
                self._return(action.worker, action.failed)
            elif kind is IdleCheck:
                self._loop.call_later(LEASE_IDLE_S, self._idle_expired, action.worker,
                                      action.pushes)
            elif kind is Look:
                self._loop.call_later(STEAL_AFTER_S, self._look, action.worker)
            elif kind is Steal:
                self._loop.create_task(self._steal(action.worker, action.task_ids))
            elif kind is FailTasks:
                for spec in action.specs:
                    self._on_failed(spec, action.error)
            elif kind is LostTask:
                self._on_worker_lost(action.spec, action.worker)

    def _start(self, coro: Awaitable[None]) -> None:
        task = self._loop.create_task(coro)
        self._leasing.add(task)
        task.add_done_callback(self._leasing.discard)

    def _push(self, worker: LeasedWorker, batch: list[TaskSpec]) -> None:
        conn = worker.conn
        for spec in batch:
            self._export(conn, spec)
            self._on_pushed(spec, worker)
        conn.send(m.PushTasks([spec.to_wire() for spec in batch]))
        if not conn.awaiting:  # results are owed: a worker gone silent is pinged, then dropped
            conn.awaiting = 1

    def _look(self, worker: LeasedWorker) -> None:
        self._carry_out(self._state.look(worker))

    def _idle_expired(self, worker: LeasedWorker, pushes: int) -> None:
        self._carry_out(self._state.idle_expired(worker, pushes))

    async def _steal(self, worker: LeasedWorker, task_ids: list[bytes]) -> None:
        try:
            given_back = await worker.conn.request(m.StealTasks(task_ids), timeout=10)
        except Exception as exc:  # noqa: BLE001 - the worker went: its loss retries them
            logger.debug("could not take tasks back from %s: %s", worker.address, exc)
            return
        self._carry_out(self._state.given_back(worker, given_back))

    async def _lease(self, ask: AskLease, attempt: LeaseAttempt) -> None:
        queue = ask.queue
        request = m.RequestLease(queue.resources, repr(ask.key), "task", queue.strategy,
                                 task_s=ask.task_s, locality=queue.locality)
        try:
            grant = await lease_worker(self._raylet(), self._connect_raylet, request,
                                       lambda reason: self._warn_infeasible(ask.key, reason),
                                       attempt)
        except Exception as exc:
            self._carry_out(self._state.lease_failed(ask.key, ask.ask_id, exc))
            return
        finally:
            del self._attempts[ask.ask_id]
        if grant is None:
            self._state.lease_cancelled(ask.key, ask.ask_id)
            return
        worker = LeasedWorker(grant.lease_id, grant.worker_id, grant.address, grant.node_id,
                              ask.key, grant.raylet, grant.reason)
        self._carry_out(self._state.lease_granted(worker, ask.ask_id))

    def _cancel_leases(self, cancel: CancelLeases) -> None:
        """One ``CancelLeaseRequests`` to each raylet where some of the requests wait."""
        told: set[int] = set()
        for ask_id in cancel.ask_ids:
            attempt = self._attempts.get(ask_id)
            if attempt is None:
                continue
            if id(attempt.conn) in told:
                attempt.cancelled = True
            else:
                told.add(id(attempt.conn))
                attempt.cancel(repr(cancel.key))

    async def _connect_worker(self, worker: LeasedWorker) -> None:
        try:
            worker.conn = await self._connect(worker.address, worker.worker_id)
        except Exception as exc:
            logger.warning("leased worker at %s unreachable: %s", worker.address, exc)
            self._carry_out(self._state.worker_unreachable(worker))
            return
        worker.on_close = lambda _: self._carry_out(self._state.worker_lost(worker))
        worker.conn.closed.add_done_callback(worker.on_close)
        self._carry_out(self._state.worker_connected(worker))

    def _connect_raylet(self, address: str) -> Awaitable[Connection]:
        return self._connect(address, None)

    def _warn_infeasible(self, key: tuple, reason: str) -> None:
        logger.warning("a task cannot be scheduled yet: %s. Add a node that has these "
                       "resources (cellfleet start --address ..., or Cluster.add_node).", reason)
        if self._on_infeasible is not None:
            for spec in self._state.tasks_of(key):
                self._on_infeasible(spec, reason)

    def _return(self, worker: LeasedWorker, failed: bool) -> None:
        if worker.on_close is not None:  # the connection is cached: leases must not pile up
            worker.conn.closed.remove_done_callback(worker.on_close)
            worker.on_close = None
        raylet = worker.raylet or self._raylet()
        if raylet is not None and raylet.is_open:
            raylet.send(m.ReturnLease(worker.lease_id, failed))
