"""Calling actors: create them, then send their method calls straight to their worker, in order.

Every process that holds a handle keeps an ``ActorState`` per actor: the connection to the
actor's worker and the calls waiting to go. Calls leave in submission order: a call whose
arguments are still pending holds back the calls behind it. The creator of an actor (its
owner) leases a dedicated worker for it, runs the constructor there and reports the actor's
state to the GCS; other processes learn the actor's address from the GCS.

The GCS may be away for a while (restarting from Redis). The owner's state reports are kept
(:class:`ActorReports`) until the GCS acknowledges them and sent again once the core worker has
reconnected; lookups retry with jittered back-off (:class:`Backoff`) for up to
``GCS_LOOKUP_TIMEOUT_S``. Only a definite answer (the GCS says DEAD, or knows no such actor)
marks an actor dead, never a lost connection.

Runs on the core worker's I/O thread.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import _messages as m
from .._graveyard import Graveyard, limit_from_env
from ..exceptions import ActorDeathReason, ActorDiedError, RayError
from .submitter import lease_worker
from .task_manager import TaskSubmitted
from .task_spec import TaskResult, TaskSpec

if TYPE_CHECKING:
    from .._rpc import Connection
    from .core_worker import CoreWorker

__all__ = ["ActorReports", "ActorSubmitter", "Backoff"]

logger = logging.getLogger(__name__)

MAX_DEAD_ACTORS = 1000  # dead actors remembered; older ones are looked up in the GCS again
GCS_LOOKUP_TIMEOUT_S = 60.0  # as Ray's gcs_rpc_server_reconnect_timeout_s


@dataclass
class Backoff:
    """Delays between retries: doubling from ``base`` up to ``cap``, each scaled by a random
    factor in [0.5, 1) so that many processes retrying at once spread out."""

    base: float = 0.05
    cap: float = 2.0
    rng: Callable[[], float] = random.random
    attempts: int = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * 2 ** self.attempts)
        self.attempts += 1
        return delay * (0.5 + 0.5 * self.rng())


class ActorReports:
    """The owner's reports of its actors' states that the GCS has not acknowledged yet: the
    latest per actor (a later state supersedes an earlier one). Bounded by the actors this
    process owns; no I/O."""

    def __init__(self) -> None:
        self.pending: dict[bytes, tuple[int, m.UpdateActor]] = {}
        self._seq = 0

    def report(self, actor_id: bytes, state: str,
               info: dict[str, Any]) -> tuple[int, m.UpdateActor]:
        """A new state to send; returns its sequence number (to acknowledge) and message."""
        self._seq += 1
        entry = self.pending[actor_id] = (self._seq, m.UpdateActor(actor_id, state, info))
        return entry

    def acknowledged(self, actor_id: bytes, seq: int) -> None:
        """The GCS has stored report ``seq``; a later one of the same actor stays pending."""
        entry = self.pending.get(actor_id)
        if entry is not None and entry[0] == seq:
            del self.pending[actor_id]

    def to_replay(self) -> list[tuple[int, m.UpdateActor]]:
        """What to send again to a GCS connected anew, oldest report first."""
        return sorted(self.pending.values(), key=lambda entry: entry[0])


@dataclass(slots=True, eq=False)
class ActorState:
    actor_id: bytes
    state: str = "PENDING"  # PENDING -> ALIVE -> DEAD, as this process sees it
    address: str = ""
    conn: Connection | None = None
    queue: deque = field(default_factory=deque)  # [spec, ready] in submission order
    in_flight: dict[bytes, TaskSpec] = field(default_factory=dict)
    death: ActorDiedError | None = None
    killed: bool = False
    owned: bool = False
    lease_id: int = 0
    run_resources: dict | None = None
    raylet: Connection | None = None  # the raylet that granted the actor's lease
    creation: TaskSpec | None = None  # the owner's: to run the constructor again
    kind: str = ""  # its lease kind ("actor" or "detached_actor")
    restarts: int = 0
    killing: Connection | None = None  # the process a kill(no_restart=False) was sent to
    kill_next: ActorDeathReason | None = None  # such a kill for the process starting now


class ActorSubmitter:
    """The actor side of one core worker's submission."""

    def __init__(self, core: CoreWorker) -> None:
        self._core = core
        self.actors: dict[bytes, ActorState] = {}
        self.dead = Graveyard(limit_from_env("CELLFLEET_MAX_DEAD_ACTORS", MAX_DEAD_ACTORS))
        self.reports = ActorReports()
        self.lookup_timeout_s = GCS_LOOKUP_TIMEOUT_S

    def _state(self, actor_id: bytes) -> ActorState:
        state = self.actors.get(actor_id)
        if state is None:
            state = self.actors[actor_id] = ActorState(actor_id)
            asyncio.ensure_future(self._look_up(state))
        return state

    # -- creation (owner) -----------------------------------------------------------------

    def create(self, spec: TaskSpec, kind: str, run_resources: dict) -> None:
        state = self.actors[spec.actor_id] = ActorState(
            spec.actor_id, owned=True, run_resources=run_resources, creation=spec, kind=kind)
        asyncio.ensure_future(self._place(state, spec, kind))

    async def _place(self, state: ActorState, spec: TaskSpec, kind: str) -> None:
        core = self._core
        try:
            grant = await lease_worker(
                core.raylet, core.peers.connect,
                m.RequestLease(spec.resources, f"actor:{spec.actor_id.hex()}", kind,
                               spec.strategy),
                lambda reason: self._unplaceable(spec, reason))
            state.lease_id, state.raylet = grant.lease_id, grant.raylet
            await self._connect(state, grant.address)
        except Exception as exc:
            error = exc if isinstance(exc, RayError) else ActorDiedError(
                spec.actor_id.hex(), ActorDeathReason.PROCESS_DIED,
                f"the actor could not be placed: {exc}")
            self._die(state, error if isinstance(error, ActorDiedError) else ActorDiedError(
                spec.actor_id.hex(), None, str(error)))
            core.fail_task(spec, error)
            return
        core.task_pushed(spec, grant.node_id, grant.worker_id, grant.reason)
        core.export_to(state.conn, spec)
        state.in_flight[spec.task_id] = spec
        state.conn.send(m.PushTasks([spec.to_wire()]))

    def _unplaceable(self, spec: TaskSpec, reason: str) -> None:
        """No node fits the actor yet: warn, and its creation task's record says why."""
        logger.warning("actor %s cannot be placed yet: %s", spec.name, reason)
        self._core.task_infeasible(spec, reason)

    async def _connect(self, state: ActorState, address: str) -> None:
        state.address = address
        state.conn = await self._core.peers.connect(address)
        state.conn.closed.add_done_callback(lambda _: self._lost(state))

    def creation_done(self, spec: TaskSpec, result: TaskResult | None) -> None:
        state = self.actors.get(spec.actor_id)
        if state is None:
            return
        state.in_flight.pop(spec.task_id, None)
        core = self._core
        if result is not None and result.ok:
            state.state = "ALIVE"
            self._report(spec.actor_id, "ALIVE", {
                "address": state.address, "node_id": result.node_id, "pid": result.pid,
                "worker_id": result.worker_id})
            if state.run_resources != spec.resources:
                state.raylet.send(m.ShrinkLease(state.lease_id, state.run_resources))
            if state.kill_next is not None:  # killed while it was (re)starting
                reason, state.kill_next = state.kill_next, None
                asyncio.ensure_future(self._kill_process(state, reason))
            self._flush(state)
            return
        detail = result.error_text if result is not None else ""
        if result is not None:
            _, error = core.read_payload(b"", result.returns[0])
            detail = str(error)
        self._die(state, ActorDiedError(spec.actor_id.hex(),
                                        ActorDeathReason.CREATION_TASK_ERROR, detail))
        self._report(spec.actor_id, "DEAD", {
            "death_cause": ActorDeathReason.CREATION_TASK_ERROR.value, "death_detail": detail})
        state.raylet.send(m.ReturnLease(state.lease_id, True))

    # -- method calls ---------------------------------------------------------------------

    def enqueue(self, spec: TaskSpec) -> None:
        """Take a call's place in line (its arguments may still be pending)."""
        state = self._state(spec.actor_id)
        if state.state == "DEAD":
            return
        state.queue.append([spec, False])

    def ready(self, spec: TaskSpec) -> None:
        state = self._state(spec.actor_id)
        if state.state == "DEAD":
            self._core.fail_task(spec, state.death)
            return
        for item in state.queue:
            if item[0] is spec:
                item[1] = True
                break
        self._flush(state)

    def drop(self, spec: TaskSpec) -> bool:
        """Remove a call that has not left yet; True if it was still waiting."""
        state = self.actors.get(spec.actor_id)
        if state is None:
            return False
        for item in state.queue:
            if item[0] is spec:
                state.queue.remove(item)
                self._flush(state)
                return True
        return False

    def call_done(self, spec: TaskSpec) -> None:
        state = self.actors.get(spec.actor_id)
        if state is not None:
            state.in_flight.pop(spec.task_id, None)
            if not state.in_flight and state.conn is not None:
                state.conn.awaiting = 0

    def connection_of(self, spec: TaskSpec) -> Connection | None:
        state = self.actors.get(spec.actor_id)
        if state is not None and spec.task_id in state.in_flight:
            return state.conn
        return None

    def _flush(self, state: ActorState) -> None:
        if state.state != "ALIVE" or state.conn is None:
            return
        batch = []
        while state.queue and state.queue[0][1]:
            spec = state.queue.popleft()[0]
            self._core.export_to(state.conn, spec)
            state.in_flight[spec.task_id] = spec
            batch.append(spec.to_wire())
        if batch:
            state.conn.send(m.PushTasks(batch))
            if not state.conn.awaiting:  # an actor gone silent with calls owed is dropped
                state.conn.awaiting = 1

    # -- the GCS ------------------------------------------------------------------------

    def _report(self, actor_id: bytes, state: str, info: dict[str, Any]) -> None:
        """Tell the GCS an owned actor's new state; kept until acknowledged."""
        self._send_report(*self.reports.report(actor_id, state, info))

    def _send_report(self, seq: int, message: m.UpdateActor) -> None:
        reply = self._core.gcs.request(message)
        reply.add_done_callback(lambda fut: self._report_answered(message.actor_id, seq, fut))

    def _report_answered(self, actor_id: bytes, seq: int, reply: asyncio.Future) -> None:
        if not reply.cancelled() and not isinstance(reply.exception(), (ConnectionError,
                                                                        OSError)):
            self.reports.acknowledged(actor_id, seq)  # stored (or refused for good)

    def gcs_reconnected(self) -> None:
        """The core worker has a new GCS connection: send what the old one lost."""
        for seq, message in self.reports.to_replay():
            self._send_report(seq, message)

    async def _ask_gcs(self, message: m.Message) -> Any:
        """Ask the GCS, retrying through an outage with jittered back-off; raises the GCS's
        own error (a definite answer), or TimeoutError once ``lookup_timeout_s`` passed."""
        backoff = Backoff()
        deadline = time.monotonic() + self.lookup_timeout_s
        while True:
            try:
                return await self._core.gcs.request(message)
            except (ConnectionError, OSError) as exc:
                delay = backoff.next_delay()
                if time.monotonic() + delay > deadline:
                    raise TimeoutError(f"the GCS did not answer for {self.lookup_timeout_s:g} "
                                       f"s ({exc})") from exc
                await asyncio.sleep(delay)

    async def _look_up(self, state: ActorState) -> None:
        """A handle from elsewhere: learn where the actor lives from the GCS."""
        try:
            info = await self._ask_gcs(m.WaitActor(state.actor_id))
        except Exception as exc:
            self._die(state, ActorDiedError(state.actor_id.hex(), None, str(exc)))
            return
        if info["state"] == "DEAD":
            self._die(state, _death_from_record(info))
            return
        try:
            await self._connect(state, info["address"])
        except Exception as exc:
            self._die(state, ActorDiedError(state.actor_id.hex(), ActorDeathReason.PROCESS_DIED,
                                            f"its worker is unreachable: {exc}"))
            return
        state.state = "ALIVE"
        self._flush(state)

    # -- death ----------------------------------------------------------------------------

    def kill(self, actor_id: bytes, reason: ActorDeathReason, restart: bool = False) -> None:
        """Kill an actor for good; with ``restart`` only its process (``kill(no_restart=
        False)``): its owner restarts it within ``max_restarts``."""
        state = self._state(actor_id)
        if restart:
            asyncio.ensure_future(self._kill_process(state, reason))
            return
        state.killed = True
        error = ActorDiedError(actor_id.hex(), reason)
        if state.conn is not None and state.conn.is_open:
            state.conn.send(m.KillActor(reason.value))
            self._mark_dead_in_gcs(actor_id, error, reason)
        else:
            asyncio.ensure_future(self._kill_when_found(state, error, reason))
        self._die(state, error)

    def _mark_dead_in_gcs(self, actor_id: bytes, error: ActorDiedError,
                          reason: ActorDeathReason) -> None:
        self._report(actor_id, "DEAD", {"death_cause": reason.value,
                                        "death_message": str(error)})

    async def _kill_when_found(self, state: ActorState, error: ActorDiedError,
                               reason: ActorDeathReason) -> None:
        """Kill an actor this process has no connection to: find it first."""
        try:
            info = await self._ask_gcs(m.WaitActor(state.actor_id))
            if info["state"] == "ALIVE":
                conn = await self._core.peers.connect(info["address"])
                conn.send(m.KillActor(reason.value))
        except Exception as exc:  # already gone
            logger.info("kill of actor %s: %s", state.actor_id.hex(), exc)
        self._mark_dead_in_gcs(state.actor_id, error, reason)

    async def _kill_process(self, state: ActorState, reason: ActorDeathReason) -> None:
        if state.owned:  # the owner knows the process: the next one, if this one is going
            conn = state.conn
            if state.state != "ALIVE" or conn is None or not conn.is_open \
                    or conn is state.killing:
                state.kill_next = reason
                return
            state.killing = conn
            conn.send(m.KillActor(reason.value))
            return
        try:
            if state.conn is None or not state.conn.is_open:
                info = await self._ask_gcs(m.WaitActor(state.actor_id))
                if info["state"] != "ALIVE":
                    return
                conn = await self._core.peers.connect(info["address"])
            else:
                conn = state.conn
            conn.send(m.KillActor(reason.value))
        except Exception as exc:  # already gone
            logger.info("kill of actor %s's process: %s", state.actor_id.hex(), exc)

    def _lost(self, state: ActorState) -> None:
        """The connection to the actor's worker closed: restart it (its owner, within
        ``max_restarts``), wait for its owner to (other callers), or it is dead."""
        self._core.peers.forget(state.address)
        if state.state == "DEAD":
            self._die(state, state.death)
            return
        if not state.killed and state.state == "ALIVE":
            if state.owned and _may_restart(state):
                self._restart(state)
                return
            if not state.owned:  # its owner decides: look it up again (ALIVE or DEAD)
                self._fail_in_flight(state, ActorDiedError(
                    state.actor_id.hex(), ActorDeathReason.PROCESS_DIED,
                    "its process died while this call ran"))
                state.state, state.conn = "PENDING", None
                asyncio.ensure_future(self._look_up(state))
                return
        reason = ActorDeathReason.KILLED if state.killed else ActorDeathReason.PROCESS_DIED
        error = ActorDiedError(state.actor_id.hex(), reason)
        if state.owned:
            self._report(state.actor_id, "DEAD", {"death_cause": reason.value,
                                                  "death_message": str(error)})
        self._die(state, error)

    def _restart(self, state: ActorState) -> None:
        """Run the constructor again on a node that fits; calls that were running go again
        (``max_task_retries``) or fail, calls queued behind them wait for the new process."""
        creation = state.creation
        options = creation.actor_options
        state.restarts += 1
        state.state, state.conn = "RESTARTING", None
        retries = options.get("max_task_retries", 0)
        again = [spec for spec in state.in_flight.values()
                 if spec.task_id != creation.task_id
                 and (retries == -1 or spec.attempt < retries)]
        for spec in again:
            spec.attempt += 1
            del state.in_flight[spec.task_id]
        self._fail_in_flight(state, ActorDiedError(
            state.actor_id.hex(), ActorDeathReason.PROCESS_DIED,
            f"its process died while this call ran; the actor is restarting "
            f"(restart {state.restarts}) and max_task_retries={retries}"))
        state.queue.extendleft([spec, True] for spec in reversed(again))
        logger.warning("actor %s died; restarting it (%d of %s)", creation.name,
                       state.restarts, options.get("max_restarts"))
        self._report(state.actor_id, "RESTARTING", {"num_restarts": state.restarts})
        options["restarts"] = state.restarts  # the new process knows it was reconstructed
        self._core.tasks.handle(TaskSubmitted(creation.task_id, "restart", creation, []))
        asyncio.ensure_future(self._place(state, creation, state.kind))

    def _fail_in_flight(self, state: ActorState, error: ActorDiedError) -> None:
        failed = list(state.in_flight.values())
        state.in_flight.clear()
        for spec in failed:
            self._core.fail_task(spec, error)

    def _die(self, state: ActorState, error: ActorDiedError) -> None:
        state.state = "DEAD"
        state.death = error
        if self.actors.get(state.actor_id) is state:
            for old in self.dead.bury(state.actor_id):  # a later call asks the GCS again
                del self.actors[old]
        failed = list(state.in_flight.values()) + [item[0] for item in state.queue
                                                    if item[1]]
        state.in_flight.clear()
        state.queue = deque(item for item in state.queue if not item[1])
        for spec in failed:
            self._core.fail_task(spec, error)

    def shutdown(self) -> None:
        for state in self.actors.values():
            if state.conn is not None:
                state.conn.close()


def _may_restart(state: ActorState) -> bool:
    limit = state.creation.actor_options.get("max_restarts", 0) if state.creation else 0
    return limit == -1 or state.restarts < limit


def _death_from_record(info: dict) -> ActorDiedError:
    cause = info.get("death_cause") or None
    try:
        reason = ActorDeathReason(cause) if cause else None
    except ValueError:
        reason = None
    return ActorDiedError(info["actor_id"].hex(), reason, info.get("death_detail") or None)
