"""Workers are kept apart by the kind of work they ran, GPU or not (Ray issue 22504)."""

from __future__ import annotations

from cellfleet.raylet.pool_state import PoolLimits, WorkerPoolState
from cellfleet.raylet.scheduler import Grant, LeaseRequest, LocalScheduler, SpawnWorker, StopWorker


def cpu(i: int) -> LeaseRequest:
    return LeaseRequest(i, {"CPU": 1.0}, "owner")


def gpu(i: int, amount: float = 1.0) -> LeaseRequest:
    return LeaseRequest(i, {"CPU": 1.0, "GPU": amount}, "owner")


def granted(actions: list) -> list[Grant]:
    return [a for a in actions if isinstance(a, Grant)]


def test_a_gpu_task_does_not_get_the_worker_a_cpu_task_ran_in() -> None:
    s = LocalScheduler({"CPU": 1.0, "GPU": 1.0})
    s.worker_registered(b"cpu-worker")
    (first,) = s.request_lease(cpu(1))
    actions = s.return_lease(first.lease.lease_id) + s.request_lease(gpu(2))
    assert not granted(actions)
    (spawn,) = [a for a in actions if isinstance(a, SpawnWorker)]
    (second,) = granted(s.worker_registered(spawn.worker_id))
    assert second.lease.worker_id == spawn.worker_id != b"cpu-worker"


def test_a_cpu_task_does_not_get_the_worker_a_gpu_task_ran_in() -> None:
    s = LocalScheduler({"CPU": 1.0, "GPU": 1.0})
    s.worker_registered(b"gpu-worker")
    (first,) = s.request_lease(gpu(1, 0.5))  # a fraction of a GPU is GPU work too
    actions = s.return_lease(first.lease.lease_id) + s.request_lease(cpu(2))
    assert not granted(actions) and any(isinstance(a, SpawnWorker) for a in actions)


def test_each_kind_keeps_reusing_its_own_workers() -> None:
    s = LocalScheduler({"CPU": 2.0, "GPU": 1.0})
    s.worker_registered(b"a")
    s.worker_registered(b"b")
    (on_gpu,) = s.request_lease(gpu(1))
    (on_cpu,) = s.request_lease(cpu(2))
    assert {on_gpu.lease.worker_id, on_cpu.lease.worker_id} == {b"a", b"b"}
    s.return_lease(on_gpu.lease.lease_id)
    s.return_lease(on_cpu.lease.lease_id)
    (cpu_again,) = granted(s.request_lease(cpu(3)))
    (gpu_again,) = granted(s.request_lease(gpu(4)))
    assert cpu_again.lease.worker_id == on_cpu.lease.worker_id
    assert gpu_again.lease.worker_id == on_gpu.lease.worker_id


def test_at_the_worker_cap_an_idle_worker_of_the_other_kind_makes_room() -> None:
    s = LocalScheduler({"CPU": 1.0, "GPU": 1.0}, limits=PoolLimits(max_workers=1))
    s.worker_registered(b"cpu-worker")
    (first,) = s.request_lease(cpu(1))
    actions = s.return_lease(first.lease.lease_id) + s.request_lease(gpu(2))
    stops = [a for a in actions if isinstance(a, StopWorker)]
    assert [a.worker_id for a in stops] == [b"cpu-worker"]
    (spawn,) = [a for a in actions if isinstance(a, SpawnWorker)]
    s.worker_died(b"cpu-worker")
    (second,) = granted(s.worker_registered(spawn.worker_id))
    assert second.lease.worker_id == spawn.worker_id


def test_the_pool_state_alone_matches_fresh_and_same_kind_workers() -> None:
    pool = WorkerPoolState(PoolLimits())
    for worker_id in (b"w1", b"w2"):
        pool.worker_registered(worker_id)
    assert pool.take_idle(gpu=True) == b"w2"  # fresh: any kind may have it
    pool.make_idle(b"w2")
    assert pool.take_idle(gpu=False) == b"w1"  # w2 ran GPU work now
    pool.make_idle(b"w1")
    assert pool.take_idle(gpu=True) == b"w2"
    assert pool.take_idle(gpu=True) is None  # only w1 (CPU work) is idle
    assert pool.take_fresh() is None  # both have held leases: no actor gets them
