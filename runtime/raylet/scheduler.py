"""The raylet's local scheduler: resource accounting and worker leases, as a plain state class.

It is fed events (a lease is requested or returned, a worker registers, blocks, unblocks or
dies, time passes) and answers with actions for the server to carry out: grant a lease on a
worker, start or stop a worker (decided by :mod:`.pool_state`), reject a request that can never
fit. Nothing here does I/O, so its tests need no processes.

Resources are Ray's: a task takes ``{"CPU": 1}`` unless told otherwise. A worker that blocks
in ``get`` gives its CPUs (and only those) back until it unblocks, so nested tasks cannot
deadlock the node.

The queue is fair: requests are granted in arrival order, and a request that does not fit yet
holds back the resources it asks for, so later, smaller requests cannot take them and starve
it (they still run on resources it does not ask for). GPUs are numbered: a lease gets the ids
of the GPUs it holds (:class:`GpuIds`), fractional requests share one GPU as in Ray.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .pool_state import PoolLimits, SpawnWorker, StopWorker, WorkerPoolState

__all__ = ["Grant", "GpuIds", "Lease", "LeaseRequest", "LocalScheduler", "Reject",
           "SpawnWorker", "StopWorker"]

ACTOR_KINDS = ("actor", "detached_actor")


@dataclass(slots=True)
class LeaseRequest:
    request_id: int
    resources: dict[str, float]
    owner: Any  # the requesting connection, opaque here
    kind: str = "task"  # "task", "actor" or "detached_actor"
    strategy: list | None = None  # util.scheduling_strategies.strategy_to_wire
    spilled: bool = False  # another raylet sent it here: run it here if this node can
    wait_infeasible: bool = False  # told it fits no node: wait for one that fits
    reason: str = "local"  # why it is queued here (the placement reason of its grant)
    task_s: float = 0.0  # the owner's mean run time of such tasks (0: unknown)
    locality: list | None = None  # [node_id, bytes]: where most argument bytes are
    arrived: float = 0.0  # when a spilled request reached this node (the local clock)
    key: str = ""  # the owner's scheduling key, by which it cancels requests it no longer needs


@dataclass(slots=True)
class Lease:
    lease_id: int
    worker_id: bytes
    resources: dict[str, float]
    owner: Any
    kind: str = "task"
    blocked: bool = False
    gpu_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Grant:
    """Lease ``lease`` to the requester; first tell its worker its GPU ids when
    ``tell_worker`` (they differ from what that worker last held)."""

    request: LeaseRequest
    lease: Lease
    tell_worker: bool = False


class GpuIds:
    """Which share of each of the node's GPUs is free; hands ids out per lease, as Ray does:
    a whole number of GPUs takes that many free GPUs, a fraction shares one GPU with others
    (the fullest one it fits on)."""

    def __init__(self, count: int) -> None:
        self.free = [1.0] * count

    def pick(self, amount: float) -> list[int] | None:
        """The ids a request of ``amount`` GPUs would get now, or None if none fits."""
        if amount <= 0:
            return []
        if amount < 1:
            fits = [i for i, f in enumerate(self.free) if f >= amount - 1e-9]
            return [min(fits, key=lambda i: self.free[i])] if fits else None
        whole = [i for i, f in enumerate(self.free) if f >= 1 - 1e-9]
        need = int(round(amount))
        return whole[:need] if len(whole) >= need else None

    def take(self, ids: list[int], amount: float) -> None:
        share = amount if amount < 1 else 1.0
        for i in ids:
            self.free[i] -= share

    def give_back(self, ids: list[int], amount: float) -> None:
        share = amount if amount < 1 else 1.0
        for i in ids:
            self.free[i] = min(1.0, self.free[i] + share)


@dataclass(slots=True)
class Reject:
    request: LeaseRequest
    reason: str


@dataclass
class LocalScheduler:
    """Resource accounting and the queue of lease requests of one node."""

    total: dict[str, float]
    limits: PoolLimits = field(default_factory=PoolLimits)
    prestart: int = 0
    clock: Callable[[], float] = time.monotonic
    available: dict[str, float] = field(init=False)
    queue: deque[LeaseRequest] = field(default_factory=deque)
    leases: dict[int, Lease] = field(default_factory=dict)
    workers: WorkerPoolState = field(init=False)
    gpus: GpuIds = field(init=False)
    _actor_leases: int = 0
    _next_lease: int = 1
    _worker_gpus: dict[bytes, list[int]] = field(default_factory=dict)  # last told, non-empty

    def __post_init__(self) -> None:
        self.available = dict(self.total)
        self.workers = WorkerPoolState(self.limits, self.clock, self.prestart)
        self.gpus = GpuIds(int(self.total.get("GPU", 0)))

    def start(self) -> list:
        """The node starts: the workers to prestart."""
        return self.schedule()

    # -- events ---------------------------------------------------------------------------

    def request_lease(self, request: LeaseRequest) -> list:
        missing = self.missing(request.resources)
        if missing:
            have = {k: self.total.get(k, 0.0) for k in missing}
            return [Reject(request, f"it requires {missing} but this node has {have}")]
        bad = invalid_request(request.resources)
        if bad:
            return [Reject(request, bad)]
        self.queue.append(request)
        return self.schedule()

    def missing(self, resources: dict[str, float]) -> dict[str, float]:
        """What of ``resources`` this node does not have at all (even when idle)."""
        return {k: v for k, v in resources.items() if v > self.total.get(k, 0.0) + 1e-9}

    def fits_now(self, resources: dict[str, float]) -> bool:
        """Could a request of ``resources`` be granted now, behind the queued ones?"""
        reserved: dict[str, float] = {}
        for queued in self.queue:
            for k, v in queued.resources.items():
                reserved[k] = reserved.get(k, 0.0) + v
        return self._fits(resources, reserved)

    def waiting_for_resources(self) -> list[LeaseRequest]:
        """The queued requests that wait for resources (not only for a worker), in order."""
        waiting: list[LeaseRequest] = []
        reserved: dict[str, float] = {}
        for request in self.queue:
            if not self._fits(request.resources, reserved):
                waiting.append(request)
            for k, v in request.resources.items():
                reserved[k] = reserved.get(k, 0.0) + v
        return waiting

    def withdraw(self, requests: list[LeaseRequest]) -> list:
        """Take queued requests out (they go to other nodes); what their absence lets through."""
        gone = {id(r) for r in requests}
        self.queue = deque(r for r in self.queue if id(r) not in gone)
        return self.schedule()

    def cancel_requests(self, owner: Any) -> tuple[list[LeaseRequest], list]:
        """Drop the queued requests of ``owner`` (it left); returns them (to answer) and what
        their absence lets through."""
        cancelled = [r for r in self.queue if r.owner is owner]
        if not cancelled:
            return [], []
        self.queue = deque(r for r in self.queue if r.owner is not owner)
        return cancelled, self.schedule()

    def return_lease(self, lease_id: int, worker_reusable: bool = True) -> list:
        lease = self._pop_lease(lease_id)
        if lease is None:
            return []
        if worker_reusable:
            self.workers.make_idle(lease.worker_id)
        return self.schedule()

    def worker_registered(self, worker_id: bytes) -> list:
        self.workers.worker_registered(worker_id)
        return self.schedule()

    def worker_failed_to_start(self, worker_id: bytes) -> list:
        """Its process could not be created, or it exited before registering."""
        return self.workers.exited_unregistered(worker_id) + self.schedule()

    def worker_died(self, worker_id: bytes) -> tuple[list[Lease], list]:
        """Forget a dead worker; returns the leases it held and the follow-up actions."""
        self.workers.worker_died(worker_id)
        self._worker_gpus.pop(worker_id, None)
        lost = [lease for lease in self.leases.values() if lease.worker_id == worker_id]
        for lease in lost:
            self._pop_lease(lease.lease_id)
        return lost, self.schedule()

    def tick(self) -> list:
        """Time passed: start deadlines, idle workers to stop, requests stalled at the cap."""
        return self.workers.tick(self._actor_leases) + self.schedule()

    def shrink_lease(self, lease_id: int, resources: dict[str, float]) -> list:
        """Keep only ``resources`` of a lease (an actor placed with more than it runs with)."""
        lease = self.leases.get(lease_id)
        if lease is None:
            return []
        self._give_back(_held(lease.resources, lease.blocked))
        self._take(_held(resources, lease.blocked))
        before, after = lease.resources.get("GPU", 0.0), resources.get("GPU", 0.0)
        if after != before:  # the ids it keeps must fit what it now holds
            self.gpus.give_back(lease.gpu_ids, before)
            lease.gpu_ids = self.gpus.pick(after) or []
            self.gpus.take(lease.gpu_ids, after)
        lease.resources = dict(resources)
        return self.schedule()

    def worker_blocked(self, worker_id: bytes) -> list:
        for lease in self.leases.values():
            if lease.worker_id == worker_id and not lease.blocked:
                lease.blocked = True
                self._give_back(_cpus(lease.resources))
        return self.schedule()

    def worker_unblocked(self, worker_id: bytes) -> None:
        for lease in self.leases.values():
            if lease.worker_id == worker_id and lease.blocked:
                lease.blocked = False
                self._take(_cpus(lease.resources))  # may go below zero for a moment, as in Ray

    # -- decisions ------------------------------------------------------------------------

    def schedule(self) -> list:
        """Grant what fits, in order; ask for workers where a grant lacks one. A request that
        does not fit holds back what it asks for from the requests behind it."""
        actions: list = []
        kept: deque[LeaseRequest] = deque()
        lacking_tasks: list[LeaseRequest] = []  # task requests that only lack a worker
        actors_lacking = 0
        reserved: dict[str, float] = {}  # resources of requests that only lack a worker
        while self.queue:
            request = self.queue.popleft()
            if not self._fits(request.resources, reserved):
                kept.append(request)
                for k, v in request.resources.items():
                    reserved[k] = reserved.get(k, 0.0) + v
                continue
            actor = request.kind in ACTOR_KINDS
            worker = self.workers.take_fresh() if actor else (
                self.workers.take_idle(request.resources.get("GPU", 0.0) > 0)
                if self.workers.idle else None)
            if worker is None:
                kept.append(request)
                if actor:
                    actors_lacking += 1
                else:
                    lacking_tasks.append(request)
                for k, v in request.resources.items():
                    reserved[k] = reserved.get(k, 0.0) + v
                continue
            actions.append(self._grant(request, worker))
        self.queue = kept
        actions += self.workers.demand(len(lacking_tasks), actors_lacking, self._actor_leases)
        if self.workers.stalled(bool(lacking_tasks) and self._stuck_at_cap()):
            actions += self._refuse(lacking_tasks)
        return actions

    def lease_worker_ids(self) -> set[bytes]:
        return {lease.worker_id for lease in self.leases.values()}

    def load(self) -> dict[str, int]:
        return {"queued": len(self.queue), "leased": len(self.leases),
                "idle_workers": len(self.workers.idle)}

    def _grant(self, request: LeaseRequest, worker_id: bytes) -> Grant:
        self._take(request.resources)
        amount = request.resources.get("GPU", 0.0)
        gpu_ids = self.gpus.pick(amount) or []
        self.gpus.take(gpu_ids, amount)
        lease = Lease(self._next_lease, worker_id, request.resources, request.owner,
                      request.kind, gpu_ids=gpu_ids)
        self._next_lease += 1
        self.leases[lease.lease_id] = lease
        if lease.kind in ACTOR_KINDS:
            self._actor_leases += 1
        told = self._worker_gpus.get(worker_id, [])
        if gpu_ids:
            self._worker_gpus[worker_id] = gpu_ids
        else:
            self._worker_gpus.pop(worker_id, None)
        return Grant(request, lease, tell_worker=told != gpu_ids)

    def _pop_lease(self, lease_id: int) -> Lease | None:
        lease = self.leases.pop(lease_id, None)
        if lease is not None:
            self._give_back(_held(lease.resources, lease.blocked))
            self.gpus.give_back(lease.gpu_ids, lease.resources.get("GPU", 0.0))
            if lease.kind in ACTOR_KINDS:
                self._actor_leases -= 1
        return lease

    def _stuck_at_cap(self) -> bool:
        """No worker can come free: the cap is reached, none starts, every task one blocks."""
        return (self.workers.at_cap(self._actor_leases) and not self.workers.starting
                and all(lease.blocked for lease in self.leases.values()
                        if lease.kind not in ACTOR_KINDS))

    def _refuse(self, requests: list[LeaseRequest]) -> list:
        cap = self.workers.limits.max_workers
        reason = (
            f"it needs another worker, but this node already runs its limit of {cap} task "
            "workers and every one of them is blocked in get() waiting for other tasks "
            f"(tasks nested more than {cap} levels deep, or that many tasks waiting at once). "
            "Raise the limit by setting CELLFLEET_MAX_WORKERS in the environment of "
            "cellfleet.init() or 'cellfleet start', or have tasks return ObjectRefs instead "
            "of calling get() on nested tasks."
        )
        refused = {id(r) for r in requests}
        self.queue = deque(r for r in self.queue if id(r) not in refused)
        return [Reject(r, reason) for r in requests]

    def _fits(self, resources: dict[str, float], reserved: dict[str, float]) -> bool:
        available = self.available
        return all(
            available.get(k, 0.0) - reserved.get(k, 0.0) >= v - 1e-9
            for k, v in resources.items()
        ) and self.gpus.pick(resources.get("GPU", 0.0)) is not None

    def _take(self, resources: dict[str, float]) -> None:
        for k, v in resources.items():
            self.available[k] = self.available.get(k, 0.0) - v

    def _give_back(self, resources: dict[str, float]) -> None:
        for k, v in resources.items():
            self.available[k] = self.available.get(k, 0.0) + v


def invalid_request(resources: dict[str, float]) -> str:
    """Why no node could ever grant ``resources`` as asked (a malformed amount), or ''."""
    gpus = resources.get("GPU", 0.0)
    if gpus > 1 and gpus != int(gpus):
        return (f"it requires {gpus:g} GPUs: more than one GPU must be a whole number "
                "(use num_gpus=2, or a fraction below 1)")
    return ""


def _held(resources: dict[str, float], blocked: bool) -> dict[str, float]:
    """What a lease of ``resources`` holds now: a blocked one has given its CPUs back."""
    return {k: v for k, v in resources.items() if not _is_cpu(k)} if blocked else resources


def _cpus(resources: dict[str, float]) -> dict[str, float]:
    """The CPUs of a lease: ``CPU``, or a placement group bundle's (``CPU_group_...``)."""
    return {k: v for k, v in resources.items() if _is_cpu(k)}


def _is_cpu(name: str) -> bool:
    return name == "CPU" or name.startswith("CPU_group_")
