"""Starting nodes on this machine: a head (the GCS and a raylet) or a node that joins a
cluster (a raylet of its own, with its own object store and workers, registered with the
cluster's GCS).

The parent binds the listening sockets itself and hands them to the children, so the ports
are known at once and nothing races for them; clients may connect before the children have
finished starting (the kernel queues the connection until they accept it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field

from ._ids import random_id
from ._process import LifelinePipe, spawn
from ._session import Session, reclaim_dead_sessions

__all__ = ["HeadNode", "WorkerNode", "default_object_store_memory", "node_resources",
           "start_head", "start_worker_node"]


def default_object_store_memory() -> int:
    """30% of the machine's memory, as Ray does, bounded by what /dev/shm can hold."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    shm = os.statvfs("/dev/shm")
    return int(min(0.3 * total, 0.9 * shm.f_bavail * shm.f_frsize))


def node_resources(num_cpus: int | None, num_gpus: int | None,
                   resources: dict[str, float] | None, object_store_memory: int,
                   host: str, head: bool = True) -> dict[str, float]:
    total_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cpus = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
    out: dict[str, float] = {"CPU": float(cpus)}
    if num_gpus:
        out["GPU"] = float(num_gpus)
    out["memory"] = float(int(0.7 * total_memory) - object_store_memory)
    out["object_store_memory"] = float(object_store_memory)
    out[f"node:{host}"] = 1.0
    if head:
        out["node:__internal_head__"] = 1.0
    out.update({k: float(v) for k, v in (resources or {}).items()})
    return out


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}. Is another cluster "
                      "running there? Pick another --port or run 'cellfleet stop'.") from None
    sock.listen(512)
    return sock


@dataclass
class HeadNode:
    """The processes of a head node started from this process."""

    session: Session
    gcs_address: str
    raylet_address: str
    node_id: bytes
    processes: list[subprocess.Popen] = field(default_factory=list)
    lifeline: LifelinePipe | None = None
    names: tuple[str, ...] = ("gcs", "raylet")  # of the processes, as their logs are named

    def startup_failure(self) -> str:
        """Why a process of this node exited early (the last line of its log), or ''."""
        for proc, name in zip(self.processes, self.names):
            try:
                proc.wait(0.5)
            except subprocess.TimeoutExpired:
                continue
            else:
                try:
                    lines = (self.session.logs / f"{name}.log").read_text().strip().splitlines()
                except OSError:
                    lines = []
                return f"the {name} exited: {lines[-1] if lines else 'no log'}"
        return ""

    def stop(self, timeout: float = 5.0, graceful: bool = True) -> None:
        """Stop the raylet (which stops its workers) and the GCS; kill what lingers (at once
        unless ``graceful``), and remove the arena a killed raylet could not."""
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        deadline = time.monotonic() + timeout
        for proc in self.processes:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.lifeline is not None:
            self.lifeline.close()
        self.session.remove_arenas()
        self.session.release()
        Session.clear_current(self.session.path)


@dataclass
class WorkerNode(HeadNode):
    """A raylet started on this machine that joined the cluster at ``gcs_address``."""

    names: tuple[str, ...] = ("raylet",)


def _spawn_raylet(session: Session, sock: socket.socket, gcs_address: str, node_id: bytes,
                  resources: dict[str, float], store_memory: int,
                  lifeline: LifelinePipe | None) -> subprocess.Popen:
    return spawn(
        "cellfleet.raylet",
        ["--session-dir", str(session.path), "--listen-fd", str(sock.fileno()),
         "--gcs-address", gcs_address, "--node-id", node_id.hex(),
         "--resources", json.dumps(resources), "--object-store-memory", str(store_memory)],
        lifeline=lifeline, log_path=session.logs / "raylet.log",
        pass_fds=(sock.fileno(), session.lock_fd),
    )


def start_worker_node(gcs_address: str, token: bytes, *, num_cpus: int | None = None,
                      num_gpus: int | None = None, resources: dict[str, float] | None = None,
                      object_store_memory: int | None = None, host: str = "127.0.0.1",
                      detached: bool = False) -> WorkerNode:
    """Start a raylet on ``host`` that joins the cluster whose GCS is at ``gcs_address``.

    The node gets a session directory of its own (logs, lock, arena names) holding the
    cluster's ``token``. Unless ``detached``, its processes die with this process.
    """
    reclaim_dead_sessions()
    session = Session.create()
    session.token_file.write_text(token.decode())  # the file exists: it stays 0600
    store_memory = object_store_memory or default_object_store_memory()
    node_id = random_id()
    lifeline = None if detached else LifelinePipe()
    sock = _listen(host, 0)
    raylet_address = "{}:{}".format(*sock.getsockname()[:2])
    try:
        raylet = _spawn_raylet(session, sock, gcs_address, node_id,
                               node_resources(num_cpus, num_gpus, resources, store_memory, host,
                                              head=False), store_memory, lifeline)
    finally:
        sock.close()
    node = WorkerNode(session, gcs_address, raylet_address, node_id, [raylet], lifeline)
    session.write_info(gcs_address=gcs_address, raylet_address=raylet_address,
                       node_id=node_id.hex(), pids=[raylet.pid], started=time.time(),
                       detached=detached, head=False)
    return node


def start_head(*, num_cpus: int | None = None, num_gpus: int | None = None,
               resources: dict[str, float] | None = None,
               object_store_memory: int | None = None, gcs_storage: str | None = None,
               host: str = "127.0.0.1", port: int = 0, detached: bool = False) -> HeadNode:
    """Start a GCS and a raylet. Unless ``detached``, they die with this process.

    Arenas and old directories of this user's dead sessions are reclaimed first.
    """
    reclaim_dead_sessions()
    session = Session.create()
    store_memory = object_store_memory or default_object_store_memory()
    node_id = random_id()
    lifeline = None if detached else LifelinePipe()
    gcs_sock = _listen(host, port)
    raylet_sock = _listen(host, 0)
    gcs_address = "{}:{}".format(*gcs_sock.getsockname()[:2])
    raylet_address = "{}:{}".format(*raylet_sock.getsockname()[:2])
    common = ["--session-dir", str(session.path)]
    try:
        gcs_args = [*common, "--listen-fd", str(gcs_sock.fileno()),
                    "--cluster-name", session.name]
        # The storage URL may hold a password: pass it in the environment, not in argv.
        gcs_env = {**os.environ, "CELLFLEET_GCS_STORAGE": gcs_storage or "memory"}
        gcs = spawn("cellfleet.gcs", gcs_args, lifeline=lifeline, env=gcs_env,
                    log_path=session.logs / "gcs.log",
                    pass_fds=(gcs_sock.fileno(), session.lock_fd))
        raylet = _spawn_raylet(session, raylet_sock, gcs_address, node_id,
                               node_resources(num_cpus, num_gpus, resources, store_memory,
                                              host), store_memory, lifeline)
    finally:
        gcs_sock.close()
        raylet_sock.close()
    head = HeadNode(session, gcs_address, raylet_address, node_id, [gcs, raylet], lifeline)
    from .gcs.storage import redact_url  # here: every worker imports this module
    session.write_info(gcs_address=gcs_address, raylet_address=raylet_address,
                       node_id=node_id.hex(), pids=[gcs.pid, raylet.pid],
                       started=time.time(), detached=detached,
                       gcs_storage=redact_url(gcs_storage) if gcs_storage else None)
    return head
