"""The raylet's asyncio layer carrying out its scheduler's answers (no processes)."""

from __future__ import annotations

import asyncio

from cellfleet import _messages as m
from cellfleet.raylet.object_store import ObjectStore
from cellfleet.raylet.pool_state import PoolLimits
from cellfleet.raylet.server import Raylet, _Client


class StubPool:
    """A worker pool that starts nothing."""

    workers: dict = {}

    def start(self, worker_id: bytes) -> None:
        pass

    def remove(self, worker_id: bytes) -> None:
        pass

    def kill(self, worker_id: bytes) -> None:
        pass


class StubConnection:
    def __init__(self, address: str) -> None:
        self.state = _Client(m.RegisterClient(b"d", address, 1, "driver", 1))


def test_requests_of_a_departed_owner_leave_no_future_behind() -> None:
    async def run() -> None:
        raylet = Raylet(node_id=b"n", resources={"CPU": 1.0}, store=ObjectStore(2**20),
                        store_name="s", pool=StubPool(), prestart=0, limits=PoolLimits())
        owner = StubConnection("127.0.0.1:1")
        future = raylet.request_lease(owner, m.RequestLease({"CPU": 1.0}, "k", "task"))
        assert not future.done() and raylet._lease_futures
        raylet.connection_closed(owner)
        assert future.cancelled() and not raylet._lease_futures

    asyncio.run(run())


def test_an_owner_cancels_only_its_own_requests_of_one_key() -> None:
    async def run() -> None:
        raylet = Raylet(node_id=b"n", resources={"CPU": 1.0}, store=ObjectStore(2**20),
                        store_name="s", pool=StubPool(), prestart=0, limits=PoolLimits())
        owner, other = StubConnection("127.0.0.1:1"), StubConnection("127.0.0.1:2")
        mine = [raylet.request_lease(owner, m.RequestLease({"CPU": 1.0}, "k", "task"))
                for _ in range(2)]
        other_key = raylet.request_lease(owner, m.RequestLease({"CPU": 1.0}, "j", "task"))
        theirs = raylet.request_lease(other, m.RequestLease({"CPU": 1.0}, "k", "task"))
        raylet.cancel_lease_requests(owner, m.CancelLeaseRequests("k"))
        assert [f.result() for f in mine] == [{"cancelled": True}] * 2
        assert not other_key.done() and not theirs.done()
        assert len(raylet.scheduler.queue) == 2 and len(raylet._lease_futures) == 2
        raylet.cancel_lease_requests(owner, m.CancelLeaseRequests("k"))  # again: nothing

    asyncio.run(run())
