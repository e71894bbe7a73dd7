"""The raylet's local scheduler as a state machine: events in, actions out."""

from __future__ import annotations

from cellfleet.raylet.pool_state import PoolLimits
from cellfleet.raylet.scheduler import (
    Grant,
    LeaseRequest,
    LocalScheduler,
    Reject,
    SpawnWorker,
    StopWorker,
)


def request(i: int, cpus: float = 1.0, owner: object = "owner") -> LeaseRequest:
    return LeaseRequest(i, {"CPU": cpus}, owner)


def test_grants_an_idle_worker_when_resources_fit() -> None:
    s = LocalScheduler({"CPU": 2.0})
    s.worker_registered(b"w1")
    actions = s.request_lease(request(1))
    assert [type(a) for a in actions] == [Grant]
    assert actions[0].lease.worker_id == b"w1" and s.available["CPU"] == 1.0


def test_starts_one_worker_per_request_that_only_lacks_a_worker() -> None:
    s = LocalScheduler({"CPU": 2.0}, PoolLimits(startup_concurrency=4))
    actions = s.request_lease(request(1)) + s.request_lease(request(2))
    assert sum(isinstance(a, SpawnWorker) for a in actions) == 2
    # A third request does not fit the CPUs, so no third worker starts.
    assert not any(isinstance(a, SpawnWorker) for a in s.request_lease(request(3)))


def test_queued_request_is_granted_when_a_lease_returns() -> None:
    s = LocalScheduler({"CPU": 1.0})
    s.worker_registered(b"w1")
    s.worker_registered(b"w2")
    grant = s.request_lease(request(1))[0]
    assert s.request_lease(request(2)) == []
    actions = s.return_lease(grant.lease.lease_id)
    assert isinstance(actions[0], Grant) and actions[0].request.request_id == 2


def test_infeasible_request_is_rejected_with_what_is_missing() -> None:
    s = LocalScheduler({"CPU": 2.0})
    (action,) = s.request_lease(LeaseRequest(1, {"GPU": 1.0}, "o"))
    assert isinstance(action, Reject) and "GPU" in action.reason


def test_a_blocked_worker_gives_its_cpus_back_until_it_unblocks() -> None:
    s = LocalScheduler({"CPU": 1.0})
    s.worker_registered(b"w1")
    s.worker_registered(b"w2")
    (first,) = s.request_lease(request(1))
    assert s.request_lease(request(2)) == []
    (grant,) = s.worker_blocked(first.lease.worker_id)
    assert grant.request.request_id == 2
    s.worker_unblocked(first.lease.worker_id)
    assert s.available["CPU"] == -1.0


def test_dead_worker_returns_its_lease_resources() -> None:
    s = LocalScheduler({"CPU": 1.0})
    s.worker_registered(b"w1")
    s.request_lease(request(1))
    lost, _ = s.worker_died(b"w1")
    assert len(lost) == 1 and s.available["CPU"] == 1.0


def test_shrinking_an_actor_lease_frees_placement_resources() -> None:
    s = LocalScheduler({"CPU": 1.0})
    s.worker_registered(b"w1")
    grant = s.request_lease(request(1))[0]
    s.shrink_lease(grant.lease.lease_id, {})
    assert s.available["CPU"] == 1.0
    s.return_lease(grant.lease.lease_id)
    assert s.available["CPU"] == 1.0


def test_cancelled_requests_of_an_owner_leave_the_queue() -> None:
    s = LocalScheduler({"CPU": 1.0})
    s.request_lease(request(1, owner="a"))
    s.cancel_requests("a")
    assert not s.queue


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def spawned(actions: list) -> list[bytes]:
    return [a.worker_id for a in actions if isinstance(a, SpawnWorker)]


def test_a_thousand_actor_requests_start_workers_a_few_at_a_time() -> None:
    s = LocalScheduler({"CPU": 2.0}, PoolLimits(startup_concurrency=2))
    actions: list = []
    for i in range(1000):
        actions += s.request_lease(LeaseRequest(i, {}, "o", "actor"))
    started = spawned(actions)
    assert len(started) == 2 and s.workers.queued == 998
    # Each registration grants one actor and lets one more start.
    actions = s.worker_registered(started[0])
    assert [type(a) for a in actions] == [Grant, SpawnWorker]
    assert s.workers.stats()["starting"] == 2 and s.workers.queued == 997


def test_a_failed_spawn_frees_its_slot_and_the_start_is_retried_after_a_backoff() -> None:
    clock = Clock()
    s = LocalScheduler({"CPU": 1.0}, PoolLimits(startup_concurrency=1, backoff_s=0.5),
                       clock=clock)
    (first,) = spawned(s.request_lease(request(1)))
    assert spawned(s.worker_failed_to_start(first)) == []  # EMFILE: wait a moment
    assert spawned(s.tick()) == []
    clock.now = 0.6
    (second,) = spawned(s.tick())
    (grant,) = s.worker_registered(second)
    assert isinstance(grant, Grant) and s.workers.failed_starts == 1


def test_a_start_is_failed_only_after_its_deadline_counted_from_its_own_start() -> None:
    clock = Clock()
    s = LocalScheduler({}, PoolLimits(startup_concurrency=1, register_timeout_s=60),
                       clock=clock)
    first, = spawned(s.request_lease(LeaseRequest(1, {}, "o", "actor"))
                     + s.request_lease(LeaseRequest(2, {}, "o", "actor")))
    clock.now = 50.0
    s.worker_registered(first)
    second = next(iter(s.workers.starting))  # queued for 50 s, started just now
    clock.now = 100.0
    assert not [a for a in s.tick() if isinstance(a, StopWorker)]
    clock.now = 111.0
    (stop,) = [a for a in s.tick() if isinstance(a, StopWorker)]
    assert stop.worker_id == second and "60 s" in stop.reason
    assert s.workers.failed_starts == 1
    # Registering while being killed changes nothing; its exit is not counted twice.
    assert not [a for a in s.worker_registered(second) if isinstance(a, Grant)]
    s.worker_died(second)
    assert second not in s.workers.registered and s.workers.failed_starts == 1


def test_idle_workers_beyond_the_pool_size_stop_after_the_idle_timeout() -> None:
    clock = Clock()
    s = LocalScheduler({"CPU": 1.0}, PoolLimits(soft_limit=1, idle_timeout_s=1.0),
                       clock=clock)
    for w in (b"w1", b"w2", b"w3"):
        s.worker_registered(w)
    clock.now = 0.5
    assert not [a for a in s.tick() if isinstance(a, StopWorker)]
    clock.now = 1.5
    stops = [a.worker_id for a in s.tick() if isinstance(a, StopWorker)]
    assert stops == [b"w1", b"w2"] and list(s.workers.idle) == [b"w3"]
    for w in stops:
        s.worker_died(w)
    clock.now = 10.0
    assert not [a for a in s.tick() if isinstance(a, StopWorker)]


def test_actor_workers_do_not_count_towards_the_pool_size() -> None:
    clock = Clock()
    s = LocalScheduler({"CPU": 1.0}, PoolLimits(soft_limit=1, idle_timeout_s=1.0),
                       clock=clock)
    s.worker_registered(b"actor")
    s.request_lease(LeaseRequest(1, {}, "o", "actor"))
    s.worker_registered(b"w1")
    clock.now = 5.0
    assert not [a for a in s.tick() if isinstance(a, StopWorker)]


def test_nested_tasks_past_the_worker_cap_are_refused_with_the_limit_and_the_fix() -> None:
    clock = Clock()
    s = LocalScheduler({"CPU": 1.0}, PoolLimits(startup_concurrency=1, max_workers=3,
                                                stall_timeout_s=2.0), clock=clock)
    for i in range(3):  # three levels, each blocked in get() on the next
        actions = s.request_lease(request(i))
        if not any(isinstance(a, Grant) for a in actions):
            (worker,) = spawned(actions) or spawned(s.tick())
            (grant,) = s.worker_registered(worker)
        else:
            grant = next(a for a in actions if isinstance(a, Grant))
        s.worker_blocked(grant.lease.worker_id)
    assert spawned(s.request_lease(request(3))) == []  # the fourth level: at the cap
    clock.now = 1.0
    assert not [a for a in s.tick() if isinstance(a, Reject)]
    clock.now = 2.5
    (reject,) = [a for a in s.tick() if isinstance(a, Reject)]
    assert reject.request.request_id == 3
    assert "limit of 3 task workers" in reject.reason and "CELLFLEET_MAX_WORKERS" in reject.reason
    assert not s.queue


def test_at_the_cap_a_request_waits_while_some_worker_still_runs() -> None:
    clock = Clock()
    s = LocalScheduler({"CPU": 2.0}, PoolLimits(max_workers=1, stall_timeout_s=1.0),
                       clock=clock)
    s.worker_registered(b"w1")
    s.request_lease(request(1))
    assert spawned(s.request_lease(request(2))) == []
    clock.now = 10.0
    assert not [a for a in s.tick() if isinstance(a, Reject)]
    assert len(s.queue) == 1


def gpu_request(i: int, gpus: float, owner: object = "owner") -> LeaseRequest:
    return LeaseRequest(i, {"CPU": 1.0, "GPU": gpus}, owner)


def test_a_large_request_is_not_starved_by_smaller_later_ones() -> None:
    s = LocalScheduler({"CPU": 2.0})
    for w in (b"w1", b"w2", b"w3"):
        s.worker_registered(w)
    (first,) = s.request_lease(request(1))
    assert s.request_lease(request(2, cpus=2.0)) == []  # waits for the first lease
    assert s.request_lease(request(3)) == []  # the free CPU is held for request 2
    (grant,) = s.return_lease(first.lease.lease_id)
    assert grant.request.request_id == 2


def test_a_waiting_request_holds_back_only_what_it_asks_for() -> None:
    s = LocalScheduler({"CPU": 2.0, "GPU": 1.0})
    for w in (b"w1", b"w2", b"w3"):
        s.worker_registered(w)
    (gpu,) = s.request_lease(LeaseRequest(1, {"GPU": 1.0}, "o"))
    assert s.request_lease(LeaseRequest(2, {"GPU": 1.0}, "o")) == []
    (cpu,) = s.request_lease(request(3))  # GPU-less work still runs meanwhile
    assert cpu.request.request_id == 3


def test_requests_of_a_departed_owner_are_handed_back_and_let_others_through() -> None:
    s = LocalScheduler({"CPU": 2.0})
    for w in (b"w1", b"w2", b"w3"):
        s.worker_registered(w)
    s.request_lease(request(1, owner="a"))
    s.request_lease(request(2, cpus=2.0, owner="gone"))
    assert s.request_lease(request(3, owner="a")) == []
    cancelled, (grant,) = s.cancel_requests("gone")
    assert [r.request_id for r in cancelled] == [2]
    assert grant.request.request_id == 3 and not s.queue


def test_each_gpu_lease_gets_its_own_gpu_ids_and_gives_them_back() -> None:
    s = LocalScheduler({"CPU": 4.0, "GPU": 2.0})
    for w in (b"w1", b"w2", b"w3"):
        s.worker_registered(w)
    a, b = s.request_lease(gpu_request(1, 1.0)) + s.request_lease(gpu_request(2, 1.0))
    assert sorted(a.lease.gpu_ids + b.lease.gpu_ids) == [0, 1]
    assert a.tell_worker and b.tell_worker
    assert s.request_lease(gpu_request(3, 1.0)) == []
    (c,) = s.return_lease(a.lease.lease_id)
    assert c.lease.gpu_ids == a.lease.gpu_ids


def test_fractional_gpus_share_one_id_and_a_whole_gpu_takes_a_free_one() -> None:
    s = LocalScheduler({"CPU": 4.0, "GPU": 2.0})
    for w in (b"w1", b"w2", b"w3", b"w4"):
        s.worker_registered(w)
    half1, half2 = s.request_lease(gpu_request(1, 0.5)) + s.request_lease(gpu_request(2, 0.5))
    assert half1.lease.gpu_ids == half2.lease.gpu_ids == [0]
    (whole,) = s.request_lease(gpu_request(3, 1.0))
    assert whole.lease.gpu_ids == [1]
    assert s.request_lease(gpu_request(4, 0.5)) == []  # 0.5 free in total, but no GPU has it


def test_a_worker_is_told_its_gpu_ids_only_when_they_change() -> None:
    s = LocalScheduler({"CPU": 2.0, "GPU": 2.0})
    s.worker_registered(b"w1")
    (first,) = s.request_lease(gpu_request(1, 1.0))
    assert first.tell_worker and first.lease.gpu_ids == [0]
    (same,) = s.return_lease(first.lease.lease_id) + s.request_lease(gpu_request(2, 1.0))
    assert same.lease.worker_id == b"w1" and same.lease.gpu_ids == [0] and not same.tell_worker
    s.worker_registered(b"w2")
    (other,) = s.request_lease(gpu_request(3, 1.0))
    assert other.lease.worker_id == b"w2" and other.lease.gpu_ids == [1] and other.tell_worker
    s.return_lease(same.lease.lease_id)
    (moved,) = s.return_lease(other.lease.lease_id) + s.request_lease(gpu_request(4, 1.0))
    assert moved.lease.worker_id == b"w2" and moved.lease.gpu_ids == [0] and moved.tell_worker


def test_a_blocked_gpu_lease_gives_back_its_cpus_but_keeps_its_gpu() -> None:
    s = LocalScheduler({"CPU": 1.0, "GPU": 1.0})
    s.worker_registered(b"w1")
    s.worker_registered(b"w2")
    (first,) = s.request_lease(gpu_request(1, 1.0))
    s.request_lease(gpu_request(2, 1.0))
    assert s.worker_blocked(first.lease.worker_id) == []  # CPU back, the GPU still held
    assert s.available == {"CPU": 1.0, "GPU": 0.0}


def test_more_than_one_gpu_must_be_whole() -> None:
    s = LocalScheduler({"CPU": 1.0, "GPU": 2.0})
    (reject,) = s.request_lease(gpu_request(1, 1.5))
    assert isinstance(reject, Reject) and "whole number" in reject.reason


def test_an_actor_never_gets_a_worker_that_ran_tasks() -> None:
    """A task worker may own objects, and an actor's worker exits with the actor."""
    s = LocalScheduler({"CPU": 2.0})
    s.worker_registered(b"task-worker")
    (grant,) = s.request_lease(request(1))
    s.return_lease(grant.lease.lease_id)  # idle again, but it has run a task
    actions = s.request_lease(LeaseRequest(2, {}, "o", "actor"))
    assert not any(isinstance(a, Grant) for a in actions)
    assert any(isinstance(a, SpawnWorker) for a in actions)
    spawned = next(a for a in actions if isinstance(a, SpawnWorker))
    (granted,) = [a for a in s.worker_registered(spawned.worker_id) if isinstance(a, Grant)]
    assert granted.lease.worker_id == spawned.worker_id
    (task_grant,) = s.request_lease(request(3))  # tasks still reuse the task worker
    assert task_grant.lease.worker_id == b"task-worker"
