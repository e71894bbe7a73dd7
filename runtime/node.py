"""Starting a head node on this machine: the GCS and a raylet as separate processes.

The parent binds both listening sockets itself and hands them to the children, so the ports
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
from .gcs.storage import redact_url

__all__ = ["HeadNode", "default_object_store_memory", "node_resources", "start_head"]


def default_object_store_memory() -> int:
    """30% of the machine's memory, as Ray does, bounded by what /dev/shm can hold."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    shm = os.statvfs("/dev/shm")
    return int(min(0.3 * total, 0.9 * shm.f_bavail * shm.f_frsize))


def node_resources(num_cpus: int | None, num_gpus: int | None,
                   resources: dict[str, float] | None, object_store_memory: int,
                   host: str) -> dict[str, float]:
    total_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cpus = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
    out: dict[str, float] = {"CPU": float(cpus)}
    if num_gpus:
        out["GPU"] = float(num_gpus)
    out["memory"] = float(int(0.7 * total_memory) - object_store_memory)
    out["object_store_memory"] = float(object_store_memory)
    out[f"node:{host}"] = 1.0
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

    def startup_failure(self) -> str:
        """Why a process of this head exited early (the last line of its log), or ''."""
        for proc, name in zip(self.processes, ("gcs", "raylet")):
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

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the raylet (which stops its workers) and the GCS; kill what lingers, and
        remove the arena a killed raylet could not."""
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
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
        raylet = spawn(
            "cellfleet.raylet",
            [*common, "--listen-fd", str(raylet_sock.fileno()), "--gcs-address", gcs_address,
             "--node-id", node_id.hex(),
             "--resources", json.dumps(node_resources(num_cpus, num_gpus, resources,
                                                      store_memory, host)),
             "--object-store-memory", str(store_memory)],
            lifeline=lifeline, log_path=session.logs / "raylet.log",
            pass_fds=(raylet_sock.fileno(), session.lock_fd),
        )
    finally:
        gcs_sock.close()
        raylet_sock.close()
    head = HeadNode(session, gcs_address, raylet_address, node_id, [gcs, raylet], lifeline)
    session.write_info(gcs_address=gcs_address, raylet_address=raylet_address,
                       node_id=node_id.hex(), pids=[gcs.pid, raylet.pid],
                       started=time.time(), detached=detached,
                       gcs_storage=redact_url(gcs_storage) if gcs_storage else None)
    return head
