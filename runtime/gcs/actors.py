"""The GCS's actor table as a plain state class: records, names, deaths, owners' exits.

An actor goes PENDING -> ALIVE -> DEAD (its owner reports each step). Its record names its
creation object (``creation_object_id``): handles looked up by name hold a reference to it, so
they keep a non-detached actor alive as the handle ``.remote()`` returned does. Its name is
taken while it is not DEAD. A non-detached actor shares its owner's fate, as in Ray: when the
process that created it exits (the raylet reports it), the actor is DEAD and its name free,
even though no owner is left to say so. Dead records are kept up to a bound (``Graveyard``) so
that late lookups get the cause. Nothing here does I/O: changes come back as actions for the
server (publish, write through, wake the waiters) to carry out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._graveyard import Graveyard

__all__ = ["ActorChanged", "ActorForgotten", "ActorTable"]


@dataclass(slots=True)
class ActorChanged:
    """Publish and store this record; wake those waiting for it when ``settled`` (ALIVE or
    DEAD)."""

    record: dict[str, Any]
    settled: bool


@dataclass(slots=True)
class ActorForgotten:
    """A dead record beyond the bound: delete it from storage."""

    actor_id: bytes


class ActorTable:
    """Actor records by id, live names, and the bounded list of dead ones."""

    def __init__(self, max_dead: int, clock: Callable[[], float] = time.time) -> None:
        self.actors: dict[bytes, dict[str, Any]] = {}
        self.dead = Graveyard(max_dead)
        self._clock = clock

    def named(self, name: str, namespace: str) -> dict[str, Any] | None:
        """The live actor called ``name`` in ``namespace``, if any."""
        for actor in self.actors.values():
            if (actor["name"] == name and actor["namespace"] == namespace
                    and actor["state"] != "DEAD"):
                return actor
        return None

    def loaded(self, actor_id: bytes, record: dict[str, Any]) -> list:
        """A record reloaded from storage."""
        self.actors[actor_id] = record
        return self._bury(actor_id) if record["state"] == "DEAD" else []

    def register(self, actor_id: bytes, info: dict[str, Any],
                 get_if_exists: bool) -> tuple[dict[str, Any] | None, list]:
        """A new actor; returns the live actor already holding its name (with
        ``get_if_exists``) or None, and the actions. A taken name raises ValueError."""
        if info.get("name"):
            existing = self.named(info["name"], info["namespace"])
            if existing is not None:
                if get_if_exists:
                    return existing, []
                raise ValueError(
                    f"The name {info['name']} (namespace={info['namespace']!r}) is already "
                    "taken. Please use a different name, or get_if_exists=True to reuse the "
                    "existing actor."
                )
        actor = {**info, "actor_id": actor_id, "state": "PENDING", "address": "",
                 "node_id": b"", "pid": 0, "num_restarts": 0, "death_cause": "",
                 "start_time": self._clock(), "end_time": None}
        self.actors[actor_id] = actor
        return None, [ActorChanged(actor, False)]

    def update(self, actor_id: bytes, state: str, info: dict[str, Any]) -> list:
        """Its owner reports a new state, or with ``state=""`` only adds to the record (the
        creation object's id, known once the creation task is submitted); the first death's
        reason stays."""
        actor = self.actors.get(actor_id)
        if actor is None or actor["state"] == "DEAD":
            return []
        actor.update(info)
        if not state:
            return [ActorChanged(actor, False)]
        actor["state"] = state
        if state == "DEAD":
            actor["end_time"] = self._clock()
        actions: list = [ActorChanged(actor, state in ("ALIVE", "DEAD"))]
        if state == "DEAD":
            actions += self._bury(actor_id)
        return actions

    def owner_exited(self, address: str) -> list:
        """The process at ``address`` exited: the non-detached actors it created die."""
        actions: list = []
        for actor_id, actor in list(self.actors.items()):
            if (actor.get("owner") == address and not actor.get("detached")
                    and actor["state"] != "DEAD"):
                actions += self.update(actor_id, "DEAD", {
                    "death_cause": "process_died",
                    "death_detail": f"its owner (the process at {address} that created it) "
                                    "has exited; create it with lifetime='detached' to keep "
                                    "it past its creator"})
        return actions

    def job_finished(self, job_id: int) -> list:
        """A job's actors share its fate, unless detached."""
        actions: list = []
        for actor_id, actor in list(self.actors.items()):
            if actor.get("job_id") == job_id and not actor.get("detached"):
                actions += self.update(actor_id, "DEAD", {
                    "death_cause": "process_died",
                    "death_detail": "the job that created it has finished"})
        return actions

    def stats(self) -> dict[str, int]:
        return {"total": len(self.actors), "dead": len(self.dead),
                "dead_forgotten": self.dead.forgotten}

    def _bury(self, actor_id: bytes) -> list:
        out = []
        for old in self.dead.bury(actor_id):
            del self.actors[old]
            out.append(ActorForgotten(old))
        return out
