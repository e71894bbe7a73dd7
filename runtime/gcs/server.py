"""The Global Control Store: the cluster's control state, served over one port.

It owns the node table (with heartbeats), jobs, exported functions, a KV store, task and object
events, and pub/sub channels (``node``, ``logs``, ``error``). Tables needed for recovery are
written through to storage (``gcs.storage``); with Redis a restarted GCS reloads them.
The GCS is never on the hot path of a task: owners push work directly to leased workers and
send it events in batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import msgpack

from .. import __version__
from .. import _messages as m
from .._graveyard import Graveyard, limit_from_env
from .._rpc import Connection, HandlerTable
from .actors import ActorChanged, ActorForgotten, ActorTable
from .nodes import NodeDied, NodeForgotten, NodeTable
from .placement_groups import (
    BundlesChanged,
    Commit,
    GroupSettled,
    PlacementGroupManager,
    Prepare,
    ReturnBundles,
)
from .resource_view import ResourceView
from .storage import MemoryStorage, RedisStorage
from .task_events import TaskEventStore

__all__ = ["GcsServer"]

logger = logging.getLogger(__name__)

NODE_TIMEOUT_S = 10.0
LOG_HISTORY = 10_000  # recent log lines kept, and at most LOG_HISTORY_BYTES of their text
LOG_HISTORY_BYTES = 8 * 2**20
MAX_DEAD_ACTORS = 1000  # as Ray's GCS keeps a bounded number of destroyed actors
MAX_FINISHED_JOBS = 1000
MAX_PLACEMENT_GROUPS = 100_000  # live ones; creating more fails, saying so
MAX_REMOVED_PLACEMENT_GROUPS = 1000
MAX_TASK_EVENTS = 20_000  # task records (and object records) kept, ~1.4 KB each
MAX_SUBSCRIBER_BACKLOG = 16 * 2**20  # unread bytes after which a subscriber misses logs
OBSERVABILITY_CHANNELS = frozenset({"logs", "tasks"})
TASKS_PUBLISH_S = 1.0  # the "tasks" channel sends changed task records at most this often
RESOURCES_PUBLISH_S = 0.02  # the "resources" channel gathers changes this long, then sends


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class GcsServer:
    """The GCS's state and message handlers; ``gcs.__main__`` runs it."""

    def __init__(self, storage: MemoryStorage | RedisStorage,
                 node_timeout_s: float = NODE_TIMEOUT_S) -> None:
        self.storage = storage
        self.node_table = NodeTable(node_timeout_s)
        self.nodes = self.node_table.nodes
        self.resource_view = ResourceView()
        self._resources_publish: asyncio.TimerHandle | None = None
        self.jobs: dict[int, dict[str, Any]] = {}
        self.finished_jobs = Graveyard(MAX_FINISHED_JOBS)
        self._last_job_id = 0  # job ids are never reused, even once forgotten
        self.functions: dict[bytes, bytes] = {}
        self.kv: dict[tuple[str, bytes], bytes] = {}
        max_tasks = limit_from_env("CELLFLEET_MAX_TASK_EVENTS", MAX_TASK_EVENTS)
        self.events = TaskEventStore(max_tasks=max_tasks, max_objects=max_tasks)
        self.actor_table = ActorTable(limit_from_env("CELLFLEET_MAX_DEAD_ACTORS",
                                                     MAX_DEAD_ACTORS))
        self.actors = self.actor_table.actors
        self.reported_drops: Counter[str] = Counter()  # dropped by core workers' buffers
        self.dropped_publications: Counter[str] = Counter()  # per channel, slow subscribers
        self.logs: deque[list] = deque()
        self._log_bytes = 0
        self.subscribers: dict[str, set[Connection]] = {}
        self._log_jobs: dict[Connection, int] = {}  # logs subscribers that want one job's
        self._tasks_published = 0  # the task-event cursor the "tasks" channel has sent up to
        self._tasks_publish: asyncio.TimerHandle | None = None
        # actor id -> connection -> its WaitActor answers to give (dropped when it closes)
        self._actor_waiters: dict[bytes, dict[Connection, list[asyncio.Future]]] = {}
        self._background: set[asyncio.Task] = set()  # storage writes under way
        self._node_conns: dict[Connection, tuple[bytes, int]] = {}  # -> node id, epoch
        self._job_conns: dict[Connection, int] = {}
        self.placement_groups = PlacementGroupManager(
            limit_from_env("CELLFLEET_MAX_PLACEMENT_GROUPS", MAX_PLACEMENT_GROUPS),
            limit_from_env("CELLFLEET_MAX_REMOVED_PLACEMENT_GROUPS",
                           MAX_REMOVED_PLACEMENT_GROUPS))
        self._raylets: dict[bytes, Connection] = {}  # node id -> its raylet's registration
        # placement group id -> connection -> its WaitPlacementGroup answers to give
        self._pg_waiters: dict[bytes, dict[Connection, list[asyncio.Future]]] = {}
        self._pg_writes: dict[bytes, asyncio.Task] = {}  # the last storage write per group

    async def load(self) -> None:
        """Reload the recoverable tables from storage (a no-op in memory)."""
        for value in (await self.storage.load("nodes")).values():
            self._carry_out(self.node_table.reloaded(_unpack(value), time.time()))
        for key, value in (await self.storage.load("jobs")).items():
            self.jobs[int(key)] = job = _unpack(value)
            if not job["alive"]:
                self._bury_job(job["job_id"])
        self.functions.update(await self.storage.load("functions"))
        for key, value in (await self.storage.load("actors")).items():
            await self._apply(self.actor_table.loaded(key, _unpack(value)))
        for key, value in (await self.storage.load("kv")).items():
            ns, _, k = key.partition(b"\0")
            self.kv[(ns.decode(), k)] = value
        for key, value in (await self.storage.load("placement_groups")).items():
            self._carry_out_pg(self.placement_groups.loaded(key, _unpack(value)))
        for job_id, job in self.jobs.items():  # a job that ended meanwhile takes its groups
            if not job["alive"]:
                self._carry_out_pg(self.placement_groups.job_finished(job_id))

    def handlers(self) -> HandlerTable:
        return {
            m.RegisterNode: self.register_node,
            m.Heartbeat: self.heartbeat,
            m.ReportResources: self.report_resources,
            m.GetNodes: lambda conn, msg: list(self._public_nodes()),
            m.RegisterJob: self.register_job,
            m.FinishJob: lambda conn, msg: self._finish_job(msg.job_id),
            m.ListJobs: lambda conn, msg: list(self.jobs.values()),
            m.ExportFunction: self.export_function,
            m.GetFunction: lambda conn, msg: self.functions.get(msg.function_id),
            m.KvPut: self.kv_put,
            m.KvGet: lambda conn, msg: self.kv.get((msg.namespace, msg.key)),
            m.KvDelete: self.kv_delete,
            m.KvKeys: lambda conn, msg: [
                k for ns, k in self.kv if ns == msg.namespace and k.startswith(msg.prefix)
            ],
            m.AddEvents: self.add_events,
            m.ListTasks: lambda conn, msg: self.events.list_tasks(msg.filters, msg.limit),
            m.ListObjects: lambda conn, msg: list(self.events.objects.values())[-msg.limit :],
            m.SummarizeTasks: lambda conn, msg: self.events.summarize(),
            m.ListTaskChanges: lambda conn, msg: self.events.changes_since(msg.since, msg.limit),
            m.ListTaskGroups: lambda conn, msg: self.events.groups(msg.filters),
            m.AddLogs: self.add_logs,
            m.Subscribe: self.subscribe,
            m.RegisterActor: self.register_actor,
            m.UpdateActor: self.update_actor,
            m.GetNamedActor: self.get_named_actor,
            m.WaitActor: self.wait_actor,
            m.ListActors: lambda conn, msg: list(self.actors.values()),
            m.ProcessExited: self.process_exited,
            m.GetTableStats: lambda conn, msg: self.table_stats(),
            m.CreatePlacementGroup: self.create_placement_group,
            m.RemovePlacementGroup: lambda conn, msg: self._carry_out_pg(
                self.placement_groups.remove(msg.pg_id)),
            m.WaitPlacementGroup: self.wait_placement_group,
            m.GetPlacementGroup: lambda conn, msg: (
                self.placement_groups.get(msg.pg_id) if msg.pg_id
                else self.placement_groups.named(msg.name, msg.namespace)),
            m.ListPlacementGroups: lambda conn, msg: self.placement_groups.table(),
        }

    def table_stats(self) -> dict[str, Any]:
        """How full each bounded table is and how much it dropped."""
        events = self.events
        return {
            "nodes": self.node_table.stats(),
            "jobs": {"total": len(self.jobs), "finished_forgotten": self.finished_jobs.forgotten},
            "actors": self.actor_table.stats(),
            "placement_groups": self.placement_groups.stats(),
            "task_events": {"tasks": len(events.tasks), "dropped_tasks": events.dropped_tasks,
                            "objects": len(events.objects),
                            "dropped_objects": events.dropped_objects},
            "dropped_by_workers": dict(self.reported_drops),
            "dropped_publications": dict(self.dropped_publications),
        }

    # -- connections ----------------------------------------------------------------------

    def connection_closed(self, conn: Connection) -> None:
        for subscribers in self.subscribers.values():
            subscribers.discard(conn)
        self._log_jobs.pop(conn, None)
        for actor_id, by_conn in list(self._actor_waiters.items()):
            for fut in by_conn.pop(conn, ()):
                fut.cancel()  # nobody to answer
            if not by_conn:
                del self._actor_waiters[actor_id]
        for pg_id, by_conn in list(self._pg_waiters.items()):
            for fut in by_conn.pop(conn, ()):
                fut.cancel()
            if not by_conn:
                del self._pg_waiters[pg_id]
        registration = self._node_conns.pop(conn, None)
        if registration is not None:
            if self._raylets.get(registration[0]) is conn:
                del self._raylets[registration[0]]
            self._carry_out(self.node_table.disconnected(*registration, time.time()))
        job_id = self._job_conns.pop(conn, None)
        if job_id is not None:
            self._spawn(self._finish_job(job_id))

    # -- nodes ----------------------------------------------------------------------------

    async def register_node(self, conn: Connection, msg: m.RegisterNode) -> dict:
        if msg.version != __version__:
            raise ValueError(f"this node runs cellfleet {msg.version or '(unknown)'} but the "
                             f"cluster's head runs {__version__}: install the same version on "
                             "every node")
        node = {
            "node_id": msg.node_id,
            "raylet_address": msg.raylet_address,
            "resources": msg.resources,
            "available": dict(msg.resources),
            "store_name": msg.store_name,
            "store_capacity": msg.store_capacity,
            "session_dir": msg.session_dir,
            "version": msg.version,
            "store": {"capacity": msg.store_capacity, "used": 0, "num_objects": 0, "spilled": 0},
            "load": {},
        }
        epoch = self.node_table.register(node, time.time())
        self._node_conns[conn] = (msg.node_id, epoch)
        self._raylets[msg.node_id] = conn
        self.resource_view.node_added(msg.node_id, msg.raylet_address, msg.resources)
        self._resources_changed(now=True)  # work waiting for this node goes there at once
        self._carry_out_pg(self.placement_groups.node_added(msg.node_id, msg.resources))
        await self.storage.put("nodes", msg.node_id, _pack(node))
        self.publish("node", {"node_id": msg.node_id, "alive": True,
                              "raylet_address": msg.raylet_address})
        return {"nodes": list(self._public_nodes()), "view": self.resource_view.snapshot()}

    def heartbeat(self, conn: Connection, msg: m.Heartbeat) -> bool:
        """False tells a raylet the GCS holds its node dead: it must register again."""
        alive = self.node_table.heartbeat(msg.node_id, time.time(), available=msg.available,
                                          store=msg.store, load=msg.load)
        if alive and self.resource_view.report(msg.node_id, msg.available, msg.load):
            self._resources_changed()
        if alive:  # the placement groups' estimate is made right at least every heartbeat
            self._carry_out_pg(self.placement_groups.node_report(msg.node_id, msg.available))
        return alive

    def report_resources(self, conn: Connection, msg: m.ReportResources) -> None:
        node = self.nodes.get(msg.node_id)
        if node is None or not node["alive"]:
            return
        node["available"], node["load"] = msg.available, msg.load
        if self.resource_view.report(msg.node_id, msg.available, msg.load):
            self._resources_changed()
            self._carry_out_pg(self.placement_groups.node_report(msg.node_id, msg.available))

    def _resources_changed(self, now: bool = False) -> None:
        """Broadcast the view's changes to the raylets soon (changes within the window go
        together), or ``now``."""
        if now:
            if self._resources_publish is not None:
                self._resources_publish.cancel()
            self._publish_resources()
        elif self._resources_publish is None:
            self._resources_publish = asyncio.get_running_loop().call_later(
                RESOURCES_PUBLISH_S, self._publish_resources)

    def _publish_resources(self) -> None:
        self._resources_publish = None
        if self.resource_view.pending():
            self.publish("resources", self.resource_view.changes())

    def _public_nodes(self):
        for node in self.nodes.values():
            yield {k: v for k, v in node.items()}

    def _carry_out(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, NodeDied):
                node = self.nodes[action.node_id]
                logger.warning("node %s is dead: %s", action.node_id.hex(), action.reason)
                if self.resource_view.node_removed(action.node_id):
                    self._resources_changed()
                self._carry_out_pg(self.placement_groups.node_removed(action.node_id))
                self._spawn(self.storage.put("nodes", action.node_id, _pack(node)))
                self.publish("node", {"node_id": action.node_id, "alive": False,
                                      "reason": action.reason})
                host = node["raylet_address"].rpartition(":")[0]
                if not any(other["alive"] and other["raylet_address"].startswith(host + ":")
                           for other in self.nodes.values()):
                    # Every process of the node went with it (no other node shares its
                    # address): their borrows end and the objects they owned elsewhere go.
                    self.publish("exits", f"{host}:*")
            elif isinstance(action, NodeForgotten):
                self._spawn(self.storage.delete("nodes", action.node_id))

    def _spawn(self, coro) -> None:
        """Run ``coro`` in the background (a storage write); log it if it fails."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("a background update of the GCS's tables failed: %r", task.exception())

    async def monitor_heartbeats(self) -> None:
        """Suspect, then declare dead, the nodes whose heartbeats stopped."""
        interval = min(1.0, self.node_table.timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            self._carry_out(self.node_table.tick(time.time()))
            self._carry_out_pg(self.placement_groups.tick())

    # -- jobs -----------------------------------------------------------------------------

    async def register_job(self, conn: Connection, msg: m.RegisterJob) -> int:
        job_id = self._last_job_id = max(self._last_job_id, *self.jobs, 0) + 1
        job = {
            "job_id": job_id,
            "driver_address": msg.driver_address,
            "driver_pid": msg.pid,
            "namespace": msg.namespace,
            "entrypoint": msg.entrypoint,
            "start_time": time.time(),
            "end_time": None,
            "alive": True,
        }
        self.jobs[job_id] = job
        self._job_conns[conn] = job_id
        await self.storage.put("jobs", str(job_id).encode(), _pack(job))
        return job_id

    async def _finish_job(self, job_id: int) -> None:
        job = self.jobs.get(job_id)
        if job is None or not job["alive"]:
            return
        job["alive"] = False
        job["end_time"] = time.time()
        await self.storage.put("jobs", str(job_id).encode(), _pack(job))
        self._bury_job(job_id)
        # A job's actors share its fate, unless detached (their processes are already gone);
        # so do its placement groups.
        await self._apply(self.actor_table.job_finished(job_id))
        self._carry_out_pg(self.placement_groups.job_finished(job_id))

    def _bury_job(self, job_id: int) -> None:
        for old in self.finished_jobs.bury(job_id):
            del self.jobs[old]
            self._spawn(self.storage.delete("jobs", str(old).encode()))

    # -- functions and KV -----------------------------------------------------------------

    async def export_function(self, conn: Connection, msg: m.ExportFunction) -> None:
        if msg.function_id not in self.functions:
            self.functions[msg.function_id] = msg.blob
            await self.storage.put("functions", msg.function_id, msg.blob)

    async def kv_put(self, conn: Connection, msg: m.KvPut) -> bool:
        key = (msg.namespace, msg.key)
        if not msg.overwrite and key in self.kv:
            return False
        self.kv[key] = msg.value
        await self.storage.put("kv", msg.namespace.encode() + b"\0" + msg.key, msg.value)
        return True

    async def kv_delete(self, conn: Connection, msg: m.KvDelete) -> bool:
        existed = self.kv.pop((msg.namespace, msg.key), None) is not None
        await self.storage.delete("kv", msg.namespace.encode() + b"\0" + msg.key)
        return existed

    # -- actors -------------------------------------------------------------------------

    async def register_actor(self, conn: Connection, msg: m.RegisterActor) -> dict | None:
        """Returns None when registered, or the live actor that already has the name."""
        existing, actions = self.actor_table.register(msg.actor_id, msg.info, msg.get_if_exists)
        await self._apply(actions)
        return existing

    async def update_actor(self, conn: Connection, msg: m.UpdateActor) -> None:
        await self._apply(self.actor_table.update(msg.actor_id, msg.state, msg.info))

    async def process_exited(self, conn: Connection, msg: m.ProcessExited) -> None:
        """A raylet saw a driver or worker go: tell every core worker, and the actors that
        process created die with it."""
        self.publish("exits", msg.address)
        await self._apply(self.actor_table.owner_exited(msg.address))

    async def _apply(self, actions: list) -> None:
        """Carry out the actor table's answer: wake waiters, publish, write through."""
        for action in actions:
            if isinstance(action, ActorChanged):
                actor = action.record
                if action.settled:
                    for futures in self._actor_waiters.pop(actor["actor_id"], {}).values():
                        for fut in futures:
                            if not fut.done():
                                fut.set_result(actor)
                self.publish("actor", actor)
                await self.storage.put("actors", actor["actor_id"], _pack(actor))
            elif isinstance(action, ActorForgotten):
                self._spawn(self.storage.delete("actors", action.actor_id))

    def get_named_actor(self, conn: Connection, msg: m.GetNamedActor) -> dict | None:
        return self.actor_table.named(msg.name, msg.namespace)

    def wait_actor(self, conn: Connection, msg: m.WaitActor) -> Any:
        actor = self.actors.get(msg.actor_id)
        if actor is None:
            raise ValueError(f"no actor {msg.actor_id.hex()} in this cluster")
        if actor["state"] in ("ALIVE", "DEAD"):
            return actor
        fut = asyncio.get_running_loop().create_future()
        self._actor_waiters.setdefault(msg.actor_id, {}).setdefault(conn, []).append(fut)
        return fut

    # -- placement groups ---------------------------------------------------------------

    def create_placement_group(self, conn: Connection, msg: m.CreatePlacementGroup) -> None:
        self._carry_out_pg(self.placement_groups.create(
            msg.pg_id, msg.bundles, msg.strategy, msg.name, msg.namespace, msg.detached,
            msg.job_id))
        self._store_placement_group(msg.pg_id)

    def _store_placement_group(self, pg_id: bytes) -> None:
        """Write a group's definition through to storage (delete it once removed), each
        write after the group's previous one, so a quick removal is never overtaken."""
        definition = self.placement_groups.definition(pg_id)
        previous = self._pg_writes.get(pg_id)

        async def write() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            if definition is None:
                await self.storage.delete("placement_groups", pg_id)
            else:
                await self.storage.put("placement_groups", pg_id, _pack(definition))

        task = asyncio.get_running_loop().create_task(write())
        self._background.add(task)
        task.add_done_callback(self._background_done)
        self._pg_writes[pg_id] = task
        task.add_done_callback(
            lambda t: self._pg_writes.pop(pg_id) if self._pg_writes.get(pg_id) is t else None)

    def wait_placement_group(self, conn: Connection, msg: m.WaitPlacementGroup) -> Any:
        record = self.placement_groups.get(msg.pg_id)
        if record is None:
            raise ValueError(self.placement_groups.refusal(msg.pg_id) or (
                f"no placement group {msg.pg_id.hex()} in this cluster (removed long ago, or "
                "never created)"))
        if record["state"] in ("CREATED", "REMOVED"):
            return record
        fut = asyncio.get_running_loop().create_future()
        waiters = self._pg_waiters.setdefault(msg.pg_id, {}).setdefault(conn, [])
        waiters.append(fut)

        def expire() -> None:
            if not fut.done():
                fut.set_result(None)
                if fut in waiters:
                    waiters.remove(fut)

        handle = asyncio.get_running_loop().call_later(max(0.0, msg.timeout), expire)
        fut.add_done_callback(lambda _: handle.cancel())
        return fut

    def _carry_out_pg(self, actions: list) -> None:
        """Carry out the placement group manager's answer: the two phases on raylets, the
        view's totals, the waiters."""
        manager = self.placement_groups
        for action in actions:
            if isinstance(action, Prepare):
                self._ask_raylet(action.node_id, m.PrepareBundles(
                    action.pg_id, action.attempt, action.bundles, action.commit),
                    lambda ok, a=action: manager.prepared(a.pg_id, a.attempt, a.node_id, ok))
            elif isinstance(action, Commit):
                self._ask_raylet(action.node_id, m.CommitBundles(
                    action.pg_id, action.attempt, action.indices),
                    lambda ok, a=action: manager.committed(a.pg_id, a.attempt, a.node_id, ok))
            elif isinstance(action, ReturnBundles):
                conn = self._raylets.get(action.node_id)
                if conn is not None and conn.is_open:
                    conn.send(m.ReturnBundles(action.pg_id, action.attempt))
            elif isinstance(action, BundlesChanged):
                if self.resource_view.bundles_changed(action.node_id, action.resources,
                                                      action.sign):
                    self._resources_changed()
            elif isinstance(action, GroupSettled):
                pg_id = bytes.fromhex(action.record["placement_group_id"])
                for futures in self._pg_waiters.pop(pg_id, {}).values():
                    for fut in futures:
                        if not fut.done():
                            fut.set_result(action.record)
                if action.record["state"] == "REMOVED":  # raylets refuse work sent to it
                    self.publish("placement_groups", pg_id)
                    self._store_placement_group(pg_id)

    def _ask_raylet(self, node_id: bytes, message: m.Message,
                    answered: Callable[[bool], list]) -> None:
        """Send a reservation step to a node's raylet; its answer (False when the node is
        gone) goes back to the manager."""
        conn = self._raylets.get(node_id)
        if conn is None or not conn.is_open:
            asyncio.get_running_loop().call_soon(lambda: self._carry_out_pg(answered(False)))
            return

        def done(fut: asyncio.Future) -> None:
            ok = not fut.cancelled() and fut.exception() is None and fut.result() is True
            self._carry_out_pg(answered(ok))

        conn.request(message).add_done_callback(done)

    # -- events, logs, pub/sub ------------------------------------------------------------

    def add_events(self, conn: Connection, msg: m.AddEvents) -> None:
        if msg.dropped:
            self.reported_drops.update(msg.dropped)
        if msg.tasks:
            self.events.add_task_events(msg.tasks)
            if self.subscribers.get("tasks") and self._tasks_publish is None:
                self._tasks_publish = asyncio.get_running_loop().call_later(
                    TASKS_PUBLISH_S, self._publish_task_changes)
        if msg.objects:
            self.events.add_object_events(msg.objects)

    def add_logs(self, conn: Connection, msg: m.AddLogs) -> None:
        logs = self.logs
        for line in msg.lines:
            logs.append(line)
            self._log_bytes += len(line[-1])
        while len(logs) > LOG_HISTORY or self._log_bytes > LOG_HISTORY_BYTES:
            self._log_bytes -= len(logs.popleft()[-1])
        lines = msg.lines
        jobs = self._log_jobs
        self.publish("logs", lines, lambda conn: lines if conn not in jobs else
                     [line for line in lines if line[0] == jobs[conn]])

    def _publish_task_changes(self) -> None:
        """The ``tasks`` channel: every ``TASKS_PUBLISH_S``, what changed since the last publish
        as live views need it: the changed groups' counts and a bounded sample of the changed
        records (``TaskEventStore.view_update``), so a view's cost does not follow the task rate."""
        self._tasks_publish = None
        update = self.events.view_update(self._tasks_published)
        self._tasks_published = update["cursor"]
        if update["tasks"] or update["groups"]:
            self.publish("tasks", update)

    def subscribe(self, conn: Connection, msg: m.Subscribe) -> None:
        if msg.channel == "tasks" and not self.subscribers.get("tasks"):
            self._tasks_published = self.events.seq  # from now on (history: ListTaskChanges)
        self.subscribers.setdefault(msg.channel, set()).add(conn)
        if msg.channel == "logs" and msg.job_id >= 0:
            self._log_jobs[conn] = msg.job_id

    def publish(self, channel: str, data: Any,
                for_subscriber: Callable[[Connection], Any] | None = None) -> None:
        """Send to every subscriber of ``channel`` (``for_subscriber(conn)``, when given, picks
        each one's part; an empty part is not sent). A subscriber that has not read
        ``MAX_SUBSCRIBER_BACKLOG`` bytes misses what only observes (logs, task events), counted;
        what keeps the cluster right (exits, actors, nodes) is small and always sent."""
        observing = channel in OBSERVABILITY_CHANNELS
        for conn in self.subscribers.get(channel, ()):
            part = data
            if for_subscriber is not None:
                part = for_subscriber(conn)
                if not part:
                    continue
            if observing and conn.unsent_bytes > MAX_SUBSCRIBER_BACKLOG:
                self.dropped_publications[channel] += 1
                continue
            conn.send(m.Publish(channel, part))
