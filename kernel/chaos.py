"""``%chaos``: faults for the classroom, injected into a cluster this kernel started.

    %chaos kill-worker [--seed N]        SIGKILL a worker that runs a task now
    %chaos kill-node [NODE] [--seed N]   SIGKILL a node's raylet and every process under it
    %chaos kill-actor ACTOR              SIGKILL the process of an actor (name or id prefix)
    %chaos restart-gcs                   SIGKILL the GCS and start it again (Redis storage)
    %chaos slow-node NODE MS             freeze a node's processes (SIGSTOP) for MS ms

The decisions (which victim, given the seed and the cluster's state; what is refused) are made
by :class:`ChaosPlanner` from a :class:`ClusterSnapshot`, with no I/O: the planner is fed what
the GCS and the process table say and returns a :class:`Fault`, or raises
:class:`ChaosRefused` saying what to do instead. :class:`ChaosRunner` takes the snapshot,
carries the fault out, waits until the cluster has seen it, announces it in the cell and
records it as a task event of type ``FAULT`` (the dashboard's timeline and the widget draw it
at the moment it happened, with what was lost).

Safe by default: only processes that descend from this kernel are touched, and only when the
cluster's GCS does too (a cluster this kernel started, never one it connected to).
"""

from __future__ import annotations

import atexit
import os
import random
import shlex
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ACTIONS", "MAX_SLOW_MS", "ActorView", "ChaosCommand", "ChaosPlanner",
           "ChaosRefused", "ChaosRunner", "ClusterSnapshot", "Fault", "NodeView",
           "WorkerView", "parse_chaos_line"]

ACTIONS = ("kill-worker", "kill-node", "kill-actor", "restart-gcs", "slow-node")
# A node silent for half the GCS's node timeout (10 s) is suspect: stay below it, so a slow
# node is slow and not declared dead.
MAX_SLOW_MS = 4000
USAGE = ("%chaos kill-worker | kill-node [NODE] | kill-actor ACTOR | restart-gcs | "
         "slow-node NODE MS  [--seed N]")


class ChaosRefused(Exception):
    """A fault ``%chaos`` will not inject: the message says why and what to do instead."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31mChaosRefused\x1b[0m: {self}"]


@dataclass(frozen=True)
class ChaosCommand:
    """A parsed ``%chaos`` line."""

    action: str
    target: str | None = None
    ms: int | None = None
    seed: int | None = None


def parse_chaos_line(line: str) -> ChaosCommand:
    """``kill-node 127.0.0.3 --seed 7`` -> ChaosCommand; ChaosRefused on bad input."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise ChaosRefused(f"cannot parse {line!r}: {exc}. Usage: {USAGE}") from None
    seed = None
    if "--seed" in words:
        at = words.index("--seed")
        if at + 1 >= len(words):
            raise ChaosRefused(f"--seed needs a whole number. Usage: {USAGE}")
        try:
            seed = int(words[at + 1])
        except ValueError:
            raise ChaosRefused(f"--seed needs a whole number, not {words[at + 1]!r}") from None
        del words[at:at + 2]
    unknown = [w for w in words if w.startswith("--")]
    if unknown:
        raise ChaosRefused(f"unknown option {unknown[0]}. Usage: {USAGE}")
    if not words or words[0] not in ACTIONS:
        got = f"{words[0]!r}" if words else "nothing"
        raise ChaosRefused(f"{got} is not a fault; one of {', '.join(ACTIONS)}. Usage: {USAGE}")
    action, rest = words[0], words[1:]
    allowed = {"kill-worker": 0, "kill-node": 1, "kill-actor": 1, "restart-gcs": 0,
               "slow-node": 2}[action]
    if len(rest) > allowed:
        raise ChaosRefused(f"{action} takes {allowed or 'no'} argument(s), got {rest}. "
                           f"Usage: {USAGE}")
    if action == "kill-actor" and not rest:
        raise ChaosRefused("kill-actor needs the actor's name or id: %chaos kill-actor NAME")
    if action == "slow-node":
        if len(rest) != 2:
            raise ChaosRefused("slow-node needs a node and milliseconds: "
                               "%chaos slow-node 127.0.0.2 1500")
        try:
            ms = int(rest[1])
        except ValueError:
            raise ChaosRefused(f"slow-node MS must be whole milliseconds, not {rest[1]!r}") \
                from None
        if not 0 < ms <= MAX_SLOW_MS:
            raise ChaosRefused(f"slow-node MS must be 1..{MAX_SLOW_MS}: a node silent longer "
                               "than that is suspected dead by the GCS; use kill-node to "
                               "see a node die")
        return ChaosCommand(action, rest[0], ms, seed)
    return ChaosCommand(action, rest[0] if rest else None, None, seed)


@dataclass(frozen=True)
class NodeView:
    """A node as the GCS lists it, with the pids of its processes that descend from this
    kernel (its raylet first; empty if this kernel did not start it)."""

    node_id: str
    ip: str
    alive: bool
    head: bool
    pids: tuple[int, ...] = ()


@dataclass(frozen=True)
class WorkerView:
    """A worker that runs a (non-actor) task now."""

    pid: int
    node_id: str
    task_name: str
    task_id: str


@dataclass(frozen=True)
class ActorView:
    actor_id: str
    name: str
    class_name: str
    state: str
    pid: int
    node_id: str
    max_restarts: int
    num_restarts: int


@dataclass(frozen=True)
class ClusterSnapshot:
    """What the planner decides from (gathered by :class:`ChaosRunner`)."""

    address: str
    started_here: bool  # the cluster's GCS process descends from this kernel
    gcs_pid: int | None
    storage: str  # "memory" or "redis"
    nodes: tuple[NodeView, ...]
    workers: tuple[WorkerView, ...] = ()
    actors: tuple[ActorView, ...] = ()
    own_pids: frozenset[int] = frozenset()  # every process that descends from this kernel
    objects_on: dict[str, int] = field(default_factory=dict)  # node id -> objects stored


@dataclass(frozen=True)
class Fault:
    """What to do: SIGKILL ``kill`` (or SIGSTOP/SIGCONT ``pause`` for ``pause_ms``)."""

    action: str
    seed: int
    victim: str  # what is hit, for people: "node 127.0.0.3 (9ab1c2d3)"
    lost: str  # what is lost with it, for people
    node_id: str | None = None
    kill: tuple[int, ...] = ()
    pause: tuple[int, ...] = ()
    pause_ms: int = 0
    worker_pid: int | None = None


class ChaosPlanner:
    """Picks a victim for a command in a snapshot. No I/O: the same seed and the same cluster
    give the same victim (candidates are ordered by node address, then task name, then pid)."""

    def plan(self, command: ChaosCommand, snap: ClusterSnapshot, seed: int) -> Fault:
        if not snap.started_here:
            raise ChaosRefused(
                f"the cluster at {snap.address} was not started by this kernel (it connected "
                "to it), so %chaos leaves it alone: it may be another user's. Start one here "
                "('%cluster restart', or cellfleet.cluster_utils.Cluster in this notebook).")
        rng = random.Random(seed)
        return getattr(self, "_" + command.action.replace("-", "_"))(command, snap, rng, seed)

    @staticmethod
    def _nodes_by_ip(snap: ClusterSnapshot) -> dict[str, NodeView]:
        return {n.node_id: n for n in snap.nodes}

    def _kill_worker(self, command: ChaosCommand, snap: ClusterSnapshot, rng: random.Random,
                     seed: int) -> Fault:
        nodes = self._nodes_by_ip(snap)
        candidates = sorted(
            (w for w in snap.workers if w.pid in snap.own_pids and w.node_id in nodes),
            key=lambda w: (_ip_key(nodes[w.node_id].ip), w.task_name, w.pid))
        if not candidates:
            raise ChaosRefused("no worker runs a task now: start some work first (e.g. "
                               "refs = [slow.remote(i) for i in range(4)]), then %chaos "
                               "kill-worker in the next cell")
        victim = rng.choice(candidates)
        node = nodes[victim.node_id]
        return Fault("kill-worker", seed, f"worker pid {victim.pid} on node {node.ip} "
                     f"({victim.node_id[:8]})", f"the task {victim.task_name} it was running",
                     node_id=victim.node_id, kill=(victim.pid,), worker_pid=victim.pid)

    def _pick_node(self, command: ChaosCommand, snap: ClusterSnapshot, rng: random.Random,
                   verb: str) -> NodeView:
        alive = [n for n in snap.nodes if n.alive]
        if command.target is not None:
            matches = [n for n in alive if n.ip == command.target
                       or n.node_id.startswith(command.target.lower())]
            if not matches:
                names = ", ".join(f"{n.ip} ({n.node_id[:8]})" for n in alive)
                raise ChaosRefused(f"no live node {command.target!r}; the live nodes are "
                                   f"{names} (an address or a node id prefix)")
            if len(matches) > 1:
                raise ChaosRefused(f"{command.target!r} names {len(matches)} nodes: give more "
                                   "of the node id")
            node = matches[0]
            if node.head:
                raise ChaosRefused(f"node {node.ip} is the head: it holds the GCS and this "
                                   f"kernel's own raylet. {verb} another node; "
                                   "'%chaos restart-gcs' restarts the GCS")
            if not node.pids:
                raise ChaosRefused(f"node {node.ip} was not started by this kernel: %chaos "
                                   "leaves it alone")
            return node
        candidates = sorted((n for n in alive if not n.head and n.pids),
                            key=lambda n: _ip_key(n.ip))
        if not candidates:
            raise ChaosRefused("there is no node but the head to hit: add nodes first "
                               "(cellfleet.cluster_utils.Cluster: cluster.add_node(num_cpus=1))")
        return rng.choice(candidates)

    def _kill_node(self, command: ChaosCommand, snap: ClusterSnapshot, rng: random.Random,
                   seed: int) -> Fault:
        node = self._pick_node(command, snap, rng, "kill")
        running = sorted(w.task_name for w in snap.workers if w.node_id == node.node_id)
        actors = sorted(a.name or a.class_name for a in snap.actors
                        if a.node_id == node.node_id and a.state == "ALIVE")
        lost = [f"{len(node.pids) - 1} processes under its raylet",
                f"{snap.objects_on.get(node.node_id, 0)} objects in its store"]
        if running:
            lost.append("running tasks " + ", ".join(running))
        if actors:
            lost.append("actors " + ", ".join(actors))
        return Fault("kill-node", seed, f"node {node.ip} ({node.node_id[:8]})",
                     "; ".join(lost), node_id=node.node_id, kill=node.pids)

    def _kill_actor(self, command: ChaosCommand, snap: ClusterSnapshot, rng: random.Random,
                    seed: int) -> Fault:
        wanted = command.target or ""
        matches = [a for a in snap.actors if a.state == "ALIVE" and a.pid and (
            a.name == wanted or a.actor_id.startswith(wanted.lower()))]
        if not matches:
            alive = sorted(a.name or a.actor_id[:8] for a in snap.actors if a.state == "ALIVE")
            raise ChaosRefused(f"no live actor {wanted!r}; live actors: "
                               f"{', '.join(alive) or 'none'} (a name or an actor id prefix)")
        if len(matches) > 1:
            raise ChaosRefused(f"{wanted!r} names {len(matches)} actors: give more of the id")
        actor = matches[0]
        if actor.pid not in snap.own_pids:
            raise ChaosRefused(f"the actor {wanted!r} runs in a process this kernel did not "
                               "start: %chaos leaves it alone")
        left = actor.max_restarts - actor.num_restarts if actor.max_restarts >= 0 else "∞"
        lost = (f"its state (it may restart {left} more times)" if actor.max_restarts
                else "the actor for good (max_restarts=0)")
        return Fault("kill-actor", seed, f"actor {actor.name or actor.actor_id[:8]} "
                     f"({actor.class_name}, pid {actor.pid})", lost, node_id=actor.node_id,
                     kill=(actor.pid,), worker_pid=actor.pid)

    def _restart_gcs(self, command: ChaosCommand, snap: ClusterSnapshot, rng: random.Random,
                     seed: int) -> Fault:
        if snap.storage != "redis":
            raise ChaosRefused(
                "this cluster's GCS keeps its tables in memory: a restarted GCS would start "
                "empty and the cluster would be lost. Start the cluster with Redis storage: "
                "cellfleet.init(gcs_storage='redis://:PASSWORD@127.0.0.1:PORT')")
        if snap.gcs_pid is None:
            raise ChaosRefused("the GCS process of this cluster was not found among this "
                               "kernel's processes")
        head = next((n for n in snap.nodes if n.head), None)
        return Fault("restart-gcs", seed, f"the GCS (pid {snap.gcs_pid})",
                     "the task events it held (in memory only); nodes, jobs, functions, "
                     "actors and the KV store come back from Redis",
                     node_id=head.node_id if head else None, kill=(snap.gcs_pid,))

    def _slow_node(self, command: ChaosCommand, snap: ClusterSnapshot, rng: random.Random,
                   seed: int) -> Fault:
        node = self._pick_node(command, snap, rng, "slow down")
        return Fault("slow-node", seed, f"node {node.ip} ({node.node_id[:8]})",
                     f"nothing: its raylet and workers stop for {command.ms} ms, then go on",
                     node_id=node.node_id, pause=node.pids, pause_ms=command.ms or 0)


def _ip_key(ip: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in ip.split("."))


# -- carrying it out -----------------------------------------------------------------------

WAIT_S = 20.0


class ChaosRunner:
    """Takes snapshots of the current cluster and carries out the planner's faults."""

    def __init__(self, planner: ChaosPlanner | None = None) -> None:
        self.planner = planner or ChaosPlanner()
        self._timers: list[threading.Timer] = []

    def run(self, line: str) -> Fault:
        """Parse, plan, inject, wait for the cluster to see it, announce and record."""
        command = parse_chaos_line(line)
        seed = command.seed if command.seed is not None else random.SystemRandom().randrange(
            10**6)
        snap = self.snapshot()
        fault = self.planner.plan(command, snap, seed)
        started = time.time()
        detail = getattr(self, "_do_" + fault.action.replace("-", "_"))(fault, snap)
        ended = time.time()
        self._record(fault, started, ended, detail)
        print(f"chaos: {fault.action} hit {fault.victim} at "
              f"{time.strftime('%H:%M:%S', time.localtime(started))}. Lost: {fault.lost}. "
              f"{detail} (seed {fault.seed}: --seed {fault.seed} picks the same victim in "
              "the same cluster)")
        return fault

    # -- looking ------------------------------------------------------------------------

    def snapshot(self) -> ClusterSnapshot:
        import psutil

        from cellfleet import _context
        from cellfleet import _messages as m

        core = _context.core
        if core is None:
            raise ChaosRefused("there is no cluster: '%cluster restart' starts one")
        ask = core.request
        nodes = ask("gcs", m.GetNodes(), timeout=5)
        running = ask("gcs", m.ListTasks({"state": "RUNNING"}, 10_000), timeout=5)
        actors = ask("gcs", m.ListActors(), timeout=5)
        own = _descendants(psutil.Process())
        gcs_pid = None
        raylets: dict[str, int] = {}
        for pid, argv in own.items():
            module = argv[2] if len(argv) > 2 and argv[1] == "-m" else ""
            if module == "cellfleet.gcs" and _session_gcs(argv) == core.gcs_address:
                gcs_pid = pid
            elif module == "cellfleet.raylet" and "--node-id" in argv:
                raylets[argv[argv.index("--node-id") + 1]] = pid
        node_views = []
        for node in nodes:
            nid = node["node_id"].hex()
            pid = raylets.get(nid)
            tree = (pid, *sorted(_descendants(psutil.Process(pid)))) \
                if pid and _exists(pid) else ()
            node_views.append(NodeView(
                nid, node["raylet_address"].rpartition(":")[0], bool(node["alive"]),
                "node:__internal_head__" in node["resources"], tree))
        workers = tuple(
            WorkerView(int(t["worker_pid"]), t.get("node_id") or "", t.get("name", "?"),
                       t["task_id"])
            for t in running if t.get("worker_pid") and not t.get("actor_id")
            and _exists(int(t["worker_pid"])))
        actor_views = tuple(
            ActorView(a["actor_id"].hex(), a.get("name") or "", a["class_name"], a["state"],
                      int(a.get("pid") or 0), a["node_id"].hex() if a.get("node_id") else "",
                      int(a.get("max_restarts") or 0), int(a.get("num_restarts") or 0))
            for a in actors)
        objects_on = {n["node_id"].hex(): int((n.get("store") or {}).get("num_objects", 0))
                      for n in nodes}
        storage = "memory"
        if gcs_pid is not None:
            try:
                url = psutil.Process(gcs_pid).environ().get("CELLFLEET_GCS_STORAGE", "memory")
            except psutil.Error:
                url = "memory"
            storage = "redis" if url.startswith(("redis://", "rediss://")) else "memory"
        return ClusterSnapshot(core.gcs_address, gcs_pid is not None, gcs_pid, storage,
                               tuple(node_views), workers, actor_views, frozenset(own),
                               objects_on)

    # -- doing --------------------------------------------------------------------------

    def _do_kill_worker(self, fault: Fault, snap: ClusterSnapshot) -> str:
        _kill(fault.kill)
        return "Its task is retried (max_retries) on another worker; its next attempt shows " \
               "in the task graph."

    def _do_kill_actor(self, fault: Fault, snap: ClusterSnapshot) -> str:
        _kill(fault.kill)
        return "The GCS restarts it if max_restarts allows; pending calls are retried up to " \
               "max_task_retries."

    def _do_kill_node(self, fault: Fault, snap: ClusterSnapshot) -> str:
        from cellfleet import _context
        from cellfleet import _messages as m

        _kill(fault.kill)
        core = _context.core
        _wait(lambda: not any(n["alive"] for n in core.request("gcs", m.GetNodes(), timeout=5)
                              if n["node_id"].hex() == fault.node_id),
              "the GCS to list the node dead")
        return "The GCS lists it dead; its tasks are retried elsewhere and its lost objects " \
               "rebuilt from their lineage when somebody needs them."

    def _do_slow_node(self, fault: Fault, snap: ClusterSnapshot) -> str:
        pids = [p for p in fault.pause if _exists(p)]
        for pid in pids:
            _signal(pid, signal.SIGSTOP)
        timer = threading.Timer(fault.pause_ms / 1000, _resume, args=(pids,))
        timer.daemon = True
        timer.start()
        if not self._timers:
            atexit.register(self.close)  # a kernel that ends in the pause lets them go on
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        return f"{len(pids)} processes stopped; they go on by themselves after " \
               f"{fault.pause_ms} ms."

    def _do_restart_gcs(self, fault: Fault, snap: ClusterSnapshot) -> str:
        import subprocess
        import sys

        import psutil

        from cellfleet import _context, api
        from cellfleet import _messages as m

        head = api._head
        pid = fault.kill[0]
        if head is None or not head.processes or head.processes[0].pid != pid:
            raise ChaosRefused("restart-gcs restarts the GCS of a cluster started with "
                               "cellfleet.init(gcs_storage=...) in this kernel")
        gcs = psutil.Process(pid)
        argv, env = gcs.cmdline(), gcs.environ()
        session_dir = argv[argv.index("--session-dir") + 1]
        cluster_name = argv[argv.index("--cluster-name") + 1]
        port = snap.address.rpartition(":")[2]
        old = head.processes[0]
        old.send_signal(signal.SIGKILL)
        old.wait(10)
        lifeline = head.lifeline.read_fd
        with open(os.path.join(session_dir, "logs", "gcs-restarted.log"), "ab") as log:
            new = subprocess.Popen(
                [sys.executable, "-m", "cellfleet.gcs", "--session-dir", session_dir,
                 "--port", port, "--cluster-name", cluster_name, "--lifeline-fd",
                 str(lifeline)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, pass_fds=(lifeline,), env=env,
                start_new_session=True)
        head.processes[0] = new  # shutdown() stops the new one
        core = _context.core
        restarted = time.time()

        def nodes_back() -> bool:
            try:
                nodes = core.request("gcs", m.GetNodes(), timeout=2)
            except Exception:  # noqa: BLE001 - the GCS is still away
                return False
            return all(n["start_time"] >= restarted - 1 for n in nodes if n["alive"]) and \
                any(n["alive"] for n in nodes)

        _wait(nodes_back, "the restarted GCS to answer and the nodes to register again")
        return f"A new GCS (pid {new.pid}) reloaded the tables from Redis and the raylets " \
               "registered again; the work goes on."

    # -- telling ------------------------------------------------------------------------

    @staticmethod
    def _record(fault: Fault, started: float, ended: float, detail: str) -> None:
        """The fault as a task record of type FAULT, through the driver's event path."""
        from cellfleet import _context
        from cellfleet.core.core_worker import submission_tag

        core = _context.core
        fault_id = os.urandom(16)
        core.events.task(fault_id, "FINISHED", {
            "name": f"chaos {fault.action}", "func_or_class_name": f"chaos {fault.action}",
            "type": "FAULT", "job_id": core.job_id, "tag": submission_tag.get(),
            "parent_task_id": "", "args": [], "returns": [], "start_time": started,
            "end_time": ended, "node_id": fault.node_id, "worker_pid": fault.worker_pid,
            "fault": {"action": fault.action, "victim": fault.victim, "lost": fault.lost,
                      "seed": fault.seed, "detail": detail},
            "placement_reason": f"chaos: {fault.victim}; lost {fault.lost}",
        })

    def close(self) -> None:
        """Let paused processes go on at once (at exit)."""
        for timer in self._timers:
            if timer.is_alive():
                timer.cancel()
                timer.function(*timer.args)
        self._timers = []


def _descendants(proc: Any) -> dict[int, list[str]]:
    """pid -> argv of every process under ``proc``."""
    import psutil

    out = {}
    try:
        children = proc.children(recursive=True)
    except psutil.Error:
        return out
    for child in children:
        try:
            out[child.pid] = child.cmdline()
        except psutil.Error:
            continue
    return out


def _session_gcs(argv: list[str]) -> str | None:
    """The GCS address written in the session directory of a runtime process."""
    import json

    if "--session-dir" not in argv:
        return None
    path = os.path.join(argv[argv.index("--session-dir") + 1], "cluster.json")
    try:
        with open(path) as f:
            return json.load(f).get("gcs_address")
    except (OSError, ValueError):
        return None


def _exists(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _kill(pids: tuple[int, ...]) -> None:
    """SIGKILL ``pids``; returns once each is gone (or a zombie)."""
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    _wait(lambda: not any(map(_exists, pids)), "the killed processes to end")


def _resume(pids: list[int]) -> None:
    for pid in pids:
        _signal(pid, signal.SIGCONT)


def _wait(predicate: Any, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ChaosRefused(f"the fault was injected, but timed out after {timeout:g}s "
                               f"waiting for {what}")
        time.sleep(0.02)  # polling the GCS, not synchronization
