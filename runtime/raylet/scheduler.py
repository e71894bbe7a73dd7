"""The raylet's local scheduler: resource accounting and worker leases, as a plain state class.

It is fed events (a lease is requested or returned, a worker registers, blocks, unblocks or
dies) and answers with actions for the server to carry out: grant a lease on a worker, start
a worker, reject a request that can never fit. Nothing here does I/O, so its tests need no
processes.

Resources are Ray's: a task takes ``{"CPU": 1}`` unless told otherwise. A worker that blocks
in ``get`` gives its CPUs back until it unblocks, so nested tasks cannot deadlock the node.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Grant", "Lease", "LeaseRequest", "LocalScheduler", "Reject", "StartWorker"]


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
class StartWorker:
    pass


@dataclass(slots=True)
class Reject:
    request: LeaseRequest
    reason: str


@dataclass
class LocalScheduler:
    """Resource accounting and the queue of lease requests of one node."""

    total: dict[str, float]
    min_workers: int = 0
    available: dict[str, float] = field(init=False)
    queue: deque[LeaseRequest] = field(default_factory=deque)
    idle_workers: list[bytes] = field(default_factory=list)
    leases: dict[int, Lease] = field(default_factory=dict)
    workers_starting: int = 0
    _next_lease: int = 1

    def __post_init__(self) -> None:
        self.available = dict(self.total)

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
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return []
        if not lease.blocked:
            self._give_back(lease.resources)
        if worker_reusable:
            self.idle_workers.append(lease.worker_id)
        return self.schedule()

    def worker_registered(self, worker_id: bytes) -> list:
        self.workers_starting = max(0, self.workers_starting - 1)
        self.idle_workers.append(worker_id)
        return self.schedule()

    def worker_died(self, worker_id: bytes) -> tuple[list[Lease], list]:
        """Forget a dead worker; returns the leases it held and the follow-up actions."""
        if worker_id in self.idle_workers:
            self.idle_workers.remove(worker_id)
        lost = [lease for lease in self.leases.values() if lease.worker_id == worker_id]
        for lease in lost:
            self.leases.pop(lease.lease_id)
            if not lease.blocked:
                self._give_back(lease.resources)
        return lost, self.schedule()

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
        needs_worker = 0
        reserved: dict[str, float] = {}  # resources of requests that only lack a worker
        while self.queue:
            request = self.queue.popleft()
            if not self._fits(request.resources, reserved):
                kept.append(request)
                continue
            if not self.idle_workers:
                kept.append(request)
                needs_worker += 1
                for k, v in request.resources.items():
                    reserved[k] = reserved.get(k, 0.0) + v
                continue
            worker_id = self.idle_workers.pop()
            self._take(request.resources)
            lease = Lease(self._next_lease, worker_id, request.resources, request.owner,
                          request.kind)
            self._next_lease += 1
            self.leases[lease.lease_id] = lease
            actions.append(Grant(request, lease))
        self.queue = kept
        for _ in range(needs_worker - self.workers_starting):
            self.workers_starting += 1
            actions.append(StartWorker())
        return actions

    def lease_worker_ids(self) -> set[bytes]:
        return {lease.worker_id for lease in self.leases.values()}

    def load(self) -> dict[str, int]:
        return {"queued": len(self.queue), "leased": len(self.leases),
                "idle_workers": len(self.idle_workers)}

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
