"""The GCS's actor table as a state class: names, deaths, an owner's exit."""

from __future__ import annotations

import asyncio

import pytest

from cellfleet import _messages as m
from cellfleet.gcs.actors import ActorChanged, ActorForgotten, ActorTable
from cellfleet.gcs.server import GcsServer
from cellfleet.gcs.storage import MemoryStorage


def info(name: str = "", owner: str = "10.0.0.1:5", detached: bool = False) -> dict:
    return {"name": name, "namespace": "ns", "owner": owner, "detached": detached, "job_id": 1}


def test_an_actor_dies_with_the_worker_that_created_it_and_frees_its_name() -> None:
    table = ActorTable(max_dead=10)
    table.register(b"a", info("counter"), False)
    table.update(b"a", "ALIVE", {"address": "10.0.0.2:7"})
    (changed,) = table.owner_exited("10.0.0.1:5")
    assert isinstance(changed, ActorChanged) and changed.settled
    assert changed.record["state"] == "DEAD" and "owner" in changed.record["death_detail"]
    assert table.named("counter", "ns") is None
    assert table.register(b"b", info("counter"), False) == (None, [ActorChanged(
        table.actors[b"b"], False)])


def test_detached_actors_and_actors_of_other_owners_outlive_an_exit() -> None:
    table = ActorTable(max_dead=10)
    table.register(b"detached", info(detached=True), False)
    table.register(b"other", info(owner="10.0.0.9:1"), False)
    assert table.owner_exited("10.0.0.1:5") == []
    assert {a["state"] for a in table.actors.values()} == {"PENDING"}


def test_a_taken_name_is_refused_unless_get_if_exists() -> None:
    table = ActorTable(max_dead=10)
    table.register(b"a", info("x"), False)
    with pytest.raises(ValueError, match="already taken"):
        table.register(b"b", info("x"), False)
    existing, actions = table.register(b"b", info("x"), True)
    assert existing is table.actors[b"a"] and actions == []


def test_the_first_death_stays_and_dead_records_are_bounded() -> None:
    table = ActorTable(max_dead=1)
    for actor_id in (b"a", b"b"):
        table.register(actor_id, info(), False)
    table.update(b"a", "DEAD", {"death_cause": "killed"})
    assert table.update(b"a", "DEAD", {"death_cause": "process_died"}) == []
    assert table.actors[b"a"]["death_cause"] == "killed"
    actions = table.update(b"b", "DEAD", {"death_cause": "killed"})
    assert actions[-1] == ActorForgotten(b"a") and list(table.actors) == [b"b"]


def test_the_gcs_answers_waiters_when_the_owner_of_an_actor_exits() -> None:
    async def run() -> dict:
        gcs = GcsServer(MemoryStorage())
        await gcs.register_actor(None, m.RegisterActor(b"a", info("n"), False))
        waiter = gcs.wait_actor(None, m.WaitActor(b"a"))
        await gcs.process_exited(None, m.ProcessExited("10.0.0.1:5"))
        return await asyncio.wait_for(waiter, 5)

    assert asyncio.run(run())["state"] == "DEAD"


def test_waiters_of_a_closed_connection_are_dropped() -> None:
    async def run() -> tuple[bool, dict]:
        gcs = GcsServer(MemoryStorage())
        await gcs.register_actor(None, m.RegisterActor(b"a", info(), False))
        caller = object()
        waiter = gcs.wait_actor(caller, m.WaitActor(b"a"))
        gcs.connection_closed(caller)
        return waiter.cancelled(), gcs._actor_waiters

    cancelled, waiters = asyncio.run(run())
    assert cancelled and waiters == {}
