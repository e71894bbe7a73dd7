"""The GCS's node table: which nodes are alive, decided from registrations and heartbeats.

A node is ``ALIVE`` while its raylet's heartbeats arrive, ``SUSPECT`` once they have been
missing for half the timeout (still listed alive: a busy machine may catch up), and ``DEAD``
after the whole timeout or when its raylet's connection drops. A node declared dead that turns
out to be running (it was paused: SIGSTOP, a suspended laptop, a stalled VM) is told so in the
reply to its next heartbeat and registers again; until then its heartbeats change nothing.
Dead nodes beyond ``max_dead`` are forgotten, oldest first, and counted.

No I/O here: the server feeds events with the time and carries out the returned actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._graveyard import Graveyard

__all__ = ["ALIVE", "DEAD", "SUSPECT", "NodeDied", "NodeForgotten", "NodeTable"]

ALIVE = "ALIVE"
SUSPECT = "SUSPECT"
DEAD = "DEAD"


@dataclass(frozen=True, slots=True)
class NodeDied:
    """Persist the node's record, publish its death and log the reason."""

    node_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class NodeForgotten:
    """Delete the node's record from storage: it is beyond the table's bound of dead nodes."""

    node_id: bytes


class NodeTable:
    """Node records (``GetNodes`` rows) and their liveness."""

    def __init__(self, timeout_s: float, max_dead: int = 1000) -> None:
        if timeout_s <= 0:
            raise ValueError(f"the node timeout must be positive, not {timeout_s}")
        self.timeout_s = timeout_s
        self.nodes: dict[bytes, dict[str, Any]] = {}
        self._dead = Graveyard(max_dead)
        self._epochs: dict[bytes, int] = {}  # registrations of each node, to spot stale closes
        self._next_epoch = 1

    def reloaded(self, record: dict[str, Any], now: float) -> list:
        """A record read back from storage by a restarted GCS."""
        node_id = record["node_id"]
        record.setdefault("state", ALIVE if record.get("alive") else DEAD)
        record["last_heartbeat"] = now  # give raylets time to reconnect
        self.nodes[node_id] = record
        return self._bury(node_id) if record["state"] == DEAD else []

    def register(self, record: dict[str, Any], now: float) -> int:
        """A raylet (re)registers; returns the epoch of this registration."""
        node_id = record["node_id"]
        record.update(state=ALIVE, alive=True, start_time=now, last_heartbeat=now,
                      death_reason="")
        self.nodes[node_id] = record
        self._dead.revive(node_id)
        epoch = self._epochs[node_id] = self._next_epoch
        self._next_epoch += 1
        return epoch

    def heartbeat(self, node_id: bytes, now: float, **figures: Any) -> bool:
        """Record a heartbeat; False tells the raylet to register again (it is known dead)."""
        node = self.nodes.get(node_id)
        if node is None or node["state"] == DEAD:
            return False
        node["state"] = ALIVE
        node["last_heartbeat"] = now
        node.update(figures)
        return True

    def disconnected(self, node_id: bytes, epoch: int, now: float) -> list:
        """The connection of registration ``epoch`` closed (a later one may have replaced it)."""
        if self._epochs.get(node_id) != epoch:
            return []
        return self._die(node_id, "its raylet disconnected", now)

    def tick(self, now: float) -> list:
        """Suspect and declare dead the nodes whose heartbeats stopped."""
        actions = []
        for node_id, node in list(self.nodes.items()):
            if node["state"] == DEAD:
                continue
            silent = now - node["last_heartbeat"]
            if silent > self.timeout_s:
                actions += self._die(node_id, f"no heartbeat for {silent:.1f}s "
                                              f"(the timeout is {self.timeout_s:g}s)", now)
            elif silent > self.timeout_s / 2:
                node["state"] = SUSPECT
        return actions

    def stats(self) -> dict[str, int]:
        states = [node["state"] for node in self.nodes.values()]
        return {"alive": states.count(ALIVE), "suspect": states.count(SUSPECT),
                "dead": states.count(DEAD), "dead_forgotten": self._dead.forgotten}

    def _die(self, node_id: bytes, reason: str, now: float) -> list:
        node = self.nodes.get(node_id)
        if node is None or node["state"] == DEAD:
            return []
        node.update(state=DEAD, alive=False, death_reason=reason, end_time=now)
        self._epochs.pop(node_id, None)
        return [NodeDied(node_id, reason), *self._bury(node_id)]

    def _bury(self, node_id: bytes) -> list:
        forgotten = self._dead.bury(node_id)
        for old in forgotten:
            del self.nodes[old]
        return [NodeForgotten(old) for old in forgotten]
