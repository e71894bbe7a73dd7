"""The raylet's local scheduler: resource accounting and worker leases, as a plain state class.

It is fed events (a lease is requested or returned, a worker registers, blocks, unblocks or
dies, time passes) and answers with actions for the server to carry out: grant a lease on a
worker, start or stop a worker (decided by :mod:`.pool_state`), reject a request that can never
fit. Nothing here does I/O, so its tests need no processes.

Resources are Ray's: a task takes ``{"CPU": 1}`` unless told otherwise. A worker that blocks
in ``get`` gives its CPUs back until it unblocks, so nested tasks cannot deadlock the node.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .pool_state import PoolLimits, SpawnWorker, StopWorker, WorkerPoolState

__all__ = ["Grant", "Lease", "LeaseRequest", "LocalScheduler", "Reject", "SpawnWorker",
           "StopWorker"]

ACTOR_KINDS = ("actor", "detached_actor")


@dataclass(slots=True)
class LeaseRequest:
    request_id: int
    resources: dict[str, float]
    owner: Any  # the requesting connection, opaque here
    kind: str = "task"  # "task", "actor" or "detached_actor"


@dataclass(slots=True)
class Lease:
    lease_id: int
    worker_id: bytes
    resources: dict[str, float]
    owner: Any
    kind: str = "task"
    blocked: bool = False


@dataclass(slots=True)
class Grant:
    request: LeaseRequest
    lease: Lease


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
    _actor_leases: int = 0
    _next_lease: int = 1

    def __post_init__(self) -> None:
        self.available = dict(self.total)
        self.workers = WorkerPoolState(self.limits, self.clock, self.prestart)

    def start(self) -> list:
        """The node starts: the workers to prestart."""
        return self.schedule()

    # -- events ---------------------------------------------------------------------------

    def request_lease(self, request: LeaseRequest) -> list:
        missing = {
            k: v for k, v in request.resources.items() if v > self.total.get(k, 0.0) + 1e-9
        }
        if missing:
            have = {k: self.total.get(k, 0.0) for k in missing}
            return [Reject(request, f"it requires {missing} but this node has {have}")]
        self.queue.append(request)
        return self.schedule()

    def cancel_requests(self, owner: Any) -> None:
        self.queue = deque(r for r in self.queue if r.owner is not owner)

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
        if not lease.blocked:
            self._give_back(lease.resources)
            self._take(resources)
        lease.resources = dict(resources)
        return self.schedule()

    def worker_blocked(self, worker_id: bytes) -> list:
        for lease in self.leases.values():
            if lease.worker_id == worker_id and not lease.blocked:
                lease.blocked = True
                self._give_back(lease.resources)
        return self.schedule()

    def worker_unblocked(self, worker_id: bytes) -> None:
        for lease in self.leases.values():
            if lease.worker_id == worker_id and lease.blocked:
                lease.blocked = False
                self._take(lease.resources)  # may go below zero for a moment, as in Ray

    # -- decisions ------------------------------------------------------------------------

    def schedule(self) -> list:
        """Grant what fits, in order; ask for workers where a grant lacks one."""
        actions: list = []
        kept: deque[LeaseRequest] = deque()
        lacking_tasks: list[LeaseRequest] = []  # task requests that only lack a worker
        actors_lacking = 0
        reserved: dict[str, float] = {}  # resources of requests that only lack a worker
        while self.queue:
            request = self.queue.popleft()
            if not self._fits(request.resources, reserved):
                kept.append(request)
                continue
            if not self.workers.idle:
                kept.append(request)
                if request.kind in ACTOR_KINDS:
                    actors_lacking += 1
                else:
                    lacking_tasks.append(request)
                for k, v in request.resources.items():
                    reserved[k] = reserved.get(k, 0.0) + v
                continue
            actions.append(self._grant(request, self.workers.take_idle()))
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
        lease = Lease(self._next_lease, worker_id, request.resources, request.owner,
                      request.kind)
        self._next_lease += 1
        self.leases[lease.lease_id] = lease
        if lease.kind in ACTOR_KINDS:
            self._actor_leases += 1
        return Grant(request, lease)

    def _pop_lease(self, lease_id: int) -> Lease | None:
        lease = self.leases.pop(lease_id, None)
        if lease is not None:
            if not lease.blocked:
                self._give_back(lease.resources)
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
        )

    def _take(self, resources: dict[str, float]) -> None:
        for k, v in resources.items():
            self.available[k] = self.available.get(k, 0.0) - v

    def _give_back(self, resources: dict[str, float]) -> None:
        for k, v in resources.items():
            self.available[k] = self.available.get(k, 0.0) + v
