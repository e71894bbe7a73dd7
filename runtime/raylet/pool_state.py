"""The worker pool's decisions, as a plain state class: when a worker process starts, when a
start has failed, which idle workers stop, and how many task workers the node may run.

Ray's rules, kept here so their tests need no processes:

* At most ``startup_concurrency`` workers start at once (Ray's ``maximum_startup_concurrency``);
  more starts wait in a queue. A thousand actors created at once start a few at a time instead
  of a thousand interpreters starving each other.
* A start fails when the process cannot be created (``EMFILE``), exits before it registers, or
  has not registered ``register_timeout_s`` after its process was started (the clock starts
  when the start is carried out, not when it was queued). A failure frees its slot and delays
  the next start by a growing back-off, so a broken environment does not spin.
* Idle task workers beyond ``soft_limit`` (Ray's ``num_workers_soft_limit``, the node's CPUs)
  stop once idle for ``idle_timeout_s`` (Ray's ``idle_worker_killing_time_threshold_ms``).
* Workers are kept apart by the kind of work they ran (Ray issue 22504): a worker that ran a
  GPU task serves only GPU tasks after it, one that ran a CPU-only task only CPU-only tasks, so
  a CPU task never runs in a process that set up a GPU (``CUDA_VISIBLE_DEVICES``, a CUDA
  context). An actor never gets a worker that held a lease: a task worker may own objects,
  and an actor's worker exits with the actor (Ray issue 20554).
* At most ``max_workers`` task workers run (actors' dedicated workers are not counted). Workers
  blocked in ``get`` still count: nested tasks need them. When the cap is reached, nothing is
  starting and every task worker is blocked, no worker can come free: after
  ``stall_timeout_s`` the requests that lack a worker are refused with a clear error.

The owner, :class:`~cellfleet.raylet.scheduler.LocalScheduler`, feeds events in; the actions
(:class:`SpawnWorker`, :class:`StopWorker`) go to the raylet's server to carry out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .._ids import random_id

__all__ = ["PoolLimits", "SpawnWorker", "StopWorker", "WorkerPoolState"]

MAX_BACKOFF_S = 5.0


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """The pool's knobs; the raylet fills them from its command line and environment."""

    startup_concurrency: int = 2
    soft_limit: int = 2
    max_workers: int = 256
    idle_timeout_s: float = 1.0
    register_timeout_s: float = 60.0
    stall_timeout_s: float = 5.0
    backoff_s: float = 0.2

    def __post_init__(self) -> None:
        if self.startup_concurrency < 1 or self.max_workers < 1 or self.soft_limit < 0:
            raise ValueError(
                f"invalid worker pool limits {self}: startup_concurrency and max_workers must "
                "be at least 1 and soft_limit at least 0"
            )


@dataclass(slots=True)
class SpawnWorker:
    """Start a worker process that will register with this id."""

    worker_id: bytes


@dataclass(slots=True)
class StopWorker:
    """Kill a worker process (idle beyond the pool's size, or stuck starting)."""

    worker_id: bytes
    reason: str


class WorkerPoolState:
    """Worker processes of one node by phase: starting, registered (idle or leased), stopping."""

    def __init__(self, limits: PoolLimits, clock: Callable[[], float] = time.monotonic,
                 prestart: int = 0) -> None:
        self.limits = limits
        self._clock = clock
        self.starting: dict[bytes, float] = {}  # worker id -> when its process was started
        self.registered: set[bytes] = set()
        self.idle: dict[bytes, float] = {}  # worker id -> idle since (oldest first)
        # Workers that have held a lease -> whether that was GPU work (see the module's rules).
        self.used: dict[bytes, bool] = {}
        self.stopping: set[bytes] = set()  # registered workers being stopped
        self._overdue: set[bytes] = set()  # starts failed at their deadline, not yet exited
        self.queued = 0  # starts wanted but not begun
        self.started = 0
        self.failed_starts = 0
        self.stopped_idle = 0
        self._prestart = prestart
        self._wanted = 0
        self._backoff = 0.0
        self._retry_at = 0.0
        self._stalled_since: float | None = None

    # -- events ---------------------------------------------------------------------------

    def demand(self, task_wanted: int, actor_wanted: int, actor_workers: int) -> list:
        """The scheduler lacks workers for ``task_wanted`` task and ``actor_wanted`` actor
        requests; ``actor_workers`` registered workers host actors. Start what is allowed.

        Idle workers left then are of the wrong kind for every waiting task (it would have
        taken them otherwise)."""
        room = max(0, self.limits.max_workers - self.task_workers(actor_workers))
        stops = []
        for worker_id in list(self.idle)[:max(0, task_wanted - room)]:
            # At the cap, idle workers of the other kind (GPU or not) hold the places the
            # waiting tasks need: they give them up.
            del self.idle[worker_id]
            self.stopping.add(worker_id)
            room += 1
            stops.append(StopWorker(worker_id, "idle, of another kind than the tasks waiting "
                                               "at the worker cap"))
        self._wanted = actor_wanted + min(task_wanted, room)
        return stops + self._admit()

    def spawn_failed(self, worker_id: bytes) -> list:
        """The process of a :class:`SpawnWorker` could not be created."""
        return self._start_failed(worker_id)

    def exited_unregistered(self, worker_id: bytes) -> list:
        """A started process exited before it registered."""
        self._overdue.discard(worker_id)
        return self._start_failed(worker_id)

    def worker_registered(self, worker_id: bytes) -> None:
        if worker_id in self._overdue:
            return  # too late: it is being killed
        self.starting.pop(worker_id, None)
        self.registered.add(worker_id)
        self._backoff = 0.0
        self.make_idle(worker_id)

    def worker_died(self, worker_id: bytes) -> None:
        self._overdue.discard(worker_id)
        self.registered.discard(worker_id)
        self.idle.pop(worker_id, None)
        self.used.pop(worker_id, None)
        self.stopping.discard(worker_id)

    def make_idle(self, worker_id: bytes) -> None:
        if worker_id in self.registered and worker_id not in self.stopping:
            self.idle[worker_id] = self._clock()

    def take_idle(self, gpu: bool = False) -> bytes | None:
        """The most recently idle worker (so the oldest idle ones are the first to stop) that
        is fresh or ran the same kind of work (``gpu`` or not); None if there is none."""
        for worker_id in reversed(self.idle):
            if self.used.get(worker_id, gpu) == gpu:
                del self.idle[worker_id]
                self.used[worker_id] = gpu
                return worker_id
        return None

    def take_fresh(self) -> bytes | None:
        """The most recently registered idle worker that never held a lease, if any."""
        for worker_id in reversed(self.idle):
            if worker_id not in self.used:
                del self.idle[worker_id]
                self.used[worker_id] = False
                return worker_id
        return None

    def tick(self, actor_workers: int) -> list:
        """Time passed: fail starts past their deadline, stop idle workers, start queued ones."""
        now = self._clock()
        actions: list = []
        deadline = self.limits.register_timeout_s
        for worker_id, since in list(self.starting.items()):
            if now - since > deadline:
                actions.append(StopWorker(worker_id, f"it did not register within {deadline:g} s "
                                                     "of its start"))
                self._overdue.add(worker_id)
                actions += self._start_failed(worker_id)
        excess = self.task_workers(actor_workers) - self.limits.soft_limit
        for worker_id, since in list(self.idle.items()):
            if excess <= 0 or now - since < self.limits.idle_timeout_s:
                break
            del self.idle[worker_id]
            self.stopping.add(worker_id)
            self.stopped_idle += 1
            excess -= 1
            actions.append(StopWorker(worker_id, "idle beyond the pool's size"))
        return actions + self._admit()

    # -- decisions ------------------------------------------------------------------------

    def task_workers(self, actor_workers: int) -> int:
        """Registered workers that do not host an actor and are not being stopped."""
        return len(self.registered) - len(self.stopping) - actor_workers

    def at_cap(self, actor_workers: int) -> bool:
        return self.task_workers(actor_workers) >= self.limits.max_workers

    def stalled(self, stuck: bool) -> bool:
        """Whether the pool has been ``stuck`` (at its cap, every worker blocked, nothing
        starting) for ``stall_timeout_s``."""
        if not stuck:
            self._stalled_since = None
            return False
        now = self._clock()
        if self._stalled_since is None:
            self._stalled_since = now
        return now - self._stalled_since >= self.limits.stall_timeout_s

    def stats(self) -> dict[str, int]:
        return {"starting": len(self.starting), "queued": self.queued,
                "registered": len(self.registered), "idle": len(self.idle),
                "started": self.started, "failed_starts": self.failed_starts,
                "stopped_idle": self.stopped_idle,
                "startup_concurrency": self.limits.startup_concurrency,
                "max_workers": self.limits.max_workers}

    def _start_failed(self, worker_id: bytes) -> list:
        if self.starting.pop(worker_id, None) is None:
            return []  # already counted (stopped at its deadline)
        self.failed_starts += 1
        self._backoff = min(MAX_BACKOFF_S, max(self.limits.backoff_s, 2 * self._backoff))
        self._retry_at = self._clock() + self._backoff
        return self._admit()

    def _admit(self) -> list:
        wanted = max(self._wanted - len(self.starting), self._prestart)
        free = self.limits.startup_concurrency - len(self.starting)
        actions = []
        if self._clock() >= self._retry_at:
            for _ in range(max(0, min(wanted, free))):
                worker_id = random_id()
                self.starting[worker_id] = self._clock()
                self.started += 1
                self._prestart = max(0, self._prestart - 1)
                actions.append(SpawnWorker(worker_id))
        self.queued = max(0, wanted - len(actions))
        return actions
