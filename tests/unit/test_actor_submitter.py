"""The actor submitter through a GCS outage: reports replayed, lookups retried (no processes)."""

from __future__ import annotations

import asyncio
from typing import Any

from cellfleet import _messages as m
from cellfleet.core.actor_submitter import ActorReports, ActorSubmitter, Backoff


class FakeGcs:
    """A GCS connection: ``answer`` maps a request to its reply, or raises."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.requests: list[m.Message] = []

    def request(self, message: m.Message) -> asyncio.Future:
        self.requests.append(message)
        fut = asyncio.get_running_loop().create_future()
        try:
            fut.set_result(self.answer(message))
        except Exception as exc:
            fut.set_exception(exc)
        return fut


def closed(message: m.Message) -> Any:
    raise ConnectionError("connection to the GCS closed")


class FakeConnection:
    def __init__(self) -> None:
        self.closed = asyncio.get_running_loop().create_future()
        self.sent: list[m.Message] = []
        self.awaiting = 0

    def send(self, message: m.Message) -> None:
        self.sent.append(message)


class FakePeers:
    async def connect(self, address: str) -> FakeConnection:
        return FakeConnection()

    def forget(self, address: str) -> None:
        pass


class FakeCore:
    def __init__(self, gcs: FakeGcs) -> None:
        self.gcs = gcs
        self.peers = FakePeers()
        self.failed: list = []

    def fail_task(self, spec: Any, error: Exception) -> None:
        self.failed.append((spec, error))


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_a_lookup_during_a_gcs_outage_waits_for_the_gcs_instead_of_failing() -> None:
    async def run() -> str:
        core = FakeCore(FakeGcs(closed))
        submitter = ActorSubmitter(core)
        state = submitter._state(b"actor")
        await until(lambda: len(core.gcs.requests) >= 2)  # retried, still waiting
        assert state.state == "PENDING"
        core.gcs = FakeGcs(lambda msg: {"state": "ALIVE", "address": "10.0.0.2:7",
                                        "actor_id": b"actor"})
        await until(lambda: state.state != "PENDING")
        return state.state

    assert asyncio.run(run()) == "ALIVE"


def test_only_a_definite_answer_marks_an_actor_dead() -> None:
    async def run() -> tuple[str, str]:
        def unknown(msg: m.Message) -> Any:
            raise ValueError("no actor 6163746f72 in this cluster")

        core = FakeCore(FakeGcs(unknown))
        state = ActorSubmitter(core)._state(b"actor")
        await until(lambda: state.state == "DEAD")
        return state.state, str(state.death)

    state, death = asyncio.run(run())
    assert "no actor" in death


def test_a_lookup_gives_up_with_a_clear_error_after_its_timeout() -> None:
    async def run() -> str:
        core = FakeCore(FakeGcs(closed))
        submitter = ActorSubmitter(core)
        submitter.lookup_timeout_s = 0.2
        state = submitter._state(b"actor")
        await until(lambda: state.state == "DEAD")
        return str(state.death)

    assert "did not answer" in asyncio.run(run())


def test_a_state_report_lost_in_an_outage_is_sent_again_on_reconnect() -> None:
    async def run() -> list[m.Message]:
        core = FakeCore(FakeGcs(closed))
        submitter = ActorSubmitter(core)
        submitter._report(b"actor", "ALIVE", {"address": "10.0.0.2:7"})
        await asyncio.sleep(0)
        assert b"actor" in submitter.reports.pending
        core.gcs = FakeGcs(lambda msg: None)
        submitter.gcs_reconnected()
        await until(lambda: not submitter.reports.pending)
        return core.gcs.requests

    (replayed,) = asyncio.run(run())
    assert replayed == m.UpdateActor(b"actor", "ALIVE", {"address": "10.0.0.2:7"})


def test_reports_keep_the_latest_state_until_that_one_is_acknowledged() -> None:
    reports = ActorReports()
    alive_seq, _ = reports.report(b"a", "ALIVE", {})
    dead_seq, _ = reports.report(b"a", "DEAD", {"death_cause": "killed"})
    reports.acknowledged(b"a", alive_seq)  # the older report's reply: DEAD still pending
    assert [msg.state for _, msg in reports.to_replay()] == ["DEAD"]
    reports.acknowledged(b"a", dead_seq)
    assert reports.to_replay() == []


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    low = Backoff(base=0.1, cap=1.0, rng=lambda: 0.0)
    high = Backoff(base=0.1, cap=1.0, rng=lambda: 0.999)
    assert [round(low.next_delay(), 3) for _ in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    assert all(0.5 * min(1.0, 0.1 * 2**i) <= high.next_delay() <= min(1.0, 0.1 * 2**i)
               for i in range(6))
