"""The actor table learns an actor's creation object after registering it (``UpdateActor``
with no state): the record gains the id whatever state it is in, and nothing else changes."""

from __future__ import annotations

from cellfleet.gcs.actors import ActorChanged, ActorTable

INFO = {"name": "kept", "namespace": "ns", "owner": "10.0.0.1:5", "detached": False,
        "job_id": 1}


def test_the_creation_object_is_added_without_a_state_change() -> None:
    table = ActorTable(max_dead=10)
    table.register(b"a", dict(INFO), False)
    (changed,) = table.update(b"a", "", {"creation_object_id": b"c" * 20})
    assert changed == ActorChanged(table.actors[b"a"], False)  # stored, no waiter woken
    assert changed.record["state"] == "PENDING"
    assert changed.record["creation_object_id"] == b"c" * 20


def test_it_may_arrive_after_the_actor_is_alive_and_never_revives_a_dead_one() -> None:
    table = ActorTable(max_dead=10)
    table.register(b"a", dict(INFO), False)
    table.update(b"a", "ALIVE", {"address": "10.0.0.2:7"})
    table.update(b"a", "", {"creation_object_id": b"c" * 20})
    assert table.actors[b"a"]["state"] == "ALIVE"
    assert table.named("kept", "ns")["creation_object_id"] == b"c" * 20
    table.register(b"b", {**INFO, "name": "gone"}, False)
    table.update(b"b", "DEAD", {"death_cause": "killed"})
    assert table.update(b"b", "", {"creation_object_id": b"d" * 20}) == []
    assert table.actors[b"b"]["state"] == "DEAD"
