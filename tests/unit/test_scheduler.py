"""The raylet's local scheduler as a state machine: events in, actions out."""

from __future__ import annotations

from cellfleet.raylet.scheduler import Grant, LeaseRequest, LocalScheduler, Reject, StartWorker


def request(i: int, cpus: float = 1.0, owner: object = "owner") -> LeaseRequest:
    return LeaseRequest(i, {"CPU": cpus}, owner)


def test_grants_an_idle_worker_when_resources_fit() -> None:
    s = LocalScheduler({"CPU": 2.0})
    s.worker_registered(b"w1")
    actions = s.request_lease(request(1))
    assert [type(a) for a in actions] == [Grant]
    assert actions[0].lease.worker_id == b"w1" and s.available["CPU"] == 1.0


def test_starts_one_worker_per_request_that_only_lacks_a_worker() -> None:
    s = LocalScheduler({"CPU": 2.0})
    actions = s.request_lease(request(1)) + s.request_lease(request(2))
    assert sum(isinstance(a, StartWorker) for a in actions) == 2
    # A third request does not fit the CPUs, so no third worker starts.
    assert not any(isinstance(a, StartWorker) for a in s.request_lease(request(3)))


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
