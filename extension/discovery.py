"""Which cellfleet clusters are running on this machine.

Two sources, merged by GCS address:

- session directories under ``cellfleet._session.root_dir()`` whose processes are alive
  (``Session.is_running()``): clusters started by ``cellfleet.init()`` or ``cellfleet start``;
- entries that kernels register in Jupyter's runtime directory,
  ``jupyter_runtime_dir()/cellfleet-cluster-<id>.json`` with the GCS address, the token file,
  the kernel id, the registering process's pid and a start time (``register_cluster``); a
  kernel on the Ray backend registers its Ray cluster with ``backend: "ray"`` and the URL of
  Ray's state API (``state_url``), which the views read instead of a GCS.

Entries whose process is gone, or whose token file has disappeared, are dropped (their files
deleted). A cluster's ``id`` is derived from its GCS address, so it is stable across requests and
the same cluster found both ways appears once.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from jupyter_core.paths import jupyter_runtime_dir

from cellfleet._session import Session, _alive, root_dir

__all__ = [
    "ClusterInfo",
    "cluster_id",
    "find_cluster",
    "list_clusters",
    "register_cluster",
    "registry_dir",
    "unregister_cluster",
]

PREFIX = "cellfleet-cluster-"


@dataclass
class ClusterInfo:
    """A running cluster the dashboard can talk to."""

    id: str
    address: str
    token_file: str
    start_time: float | None = None
    kernel_id: str | None = None
    session_dir: str | None = None
    pid: int | None = None
    source: str = "session"  # "session" or "kernel"
    backend: str = "cellfleet"  # or "ray": read through Ray's state API at state_url
    state_url: str | None = None

    def token(self) -> bytes:
        return Path(self.token_file).read_text().strip().encode()

    def to_json(self) -> dict:
        return asdict(self)


def cluster_id(address: str) -> str:
    """A short stable id for the cluster whose GCS listens at ``address``."""
    return hashlib.sha1(address.encode()).hexdigest()[:12]


def registry_dir() -> Path:
    return Path(jupyter_runtime_dir())


def _entry_path(address: str) -> Path:
    return registry_dir() / f"{PREFIX}{cluster_id(address)}.json"


def register_cluster(address: str, token_file: str | os.PathLike, *, kernel_id: str | None = None,
                     start_time: float | None = None, pid: int | None = None,
                     session_dir: str | os.PathLike | None = None, backend: str = "cellfleet",
                     state_url: str | None = None) -> Path:
    """Announce a running cluster to the dashboard; returns the entry's path.

    ``pid`` is the process whose life bounds the entry (default: the caller's, e.g. the
    kernel); when it is gone the entry is dropped.
    """
    path = _entry_path(address)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "address": address,
        "token_file": str(token_file),
        "kernel_id": kernel_id,
        "start_time": time.time() if start_time is None else start_time,
        "pid": os.getpid() if pid is None else pid,
        "session_dir": None if session_dir is None else str(session_dir),
        "backend": backend,
        "state_url": state_url,
    }
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(entry, f)
    tmp.replace(path)
    return path


def unregister_cluster(address: str) -> None:
    """Remove the entry ``register_cluster`` wrote for ``address`` (no error if absent)."""
    try:
        _entry_path(address).unlink()
    except FileNotFoundError:
        pass


def _session_clusters() -> list[ClusterInfo]:
    root = root_dir()
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.glob("session_*")):
        session = Session(path)
        info = session.info()
        address = info.get("gcs_address")
        if not address or not session.token_file.exists() or not session.is_running():
            continue
        found.append(ClusterInfo(
            id=cluster_id(address), address=address, token_file=str(session.token_file),
            start_time=info.get("started"), session_dir=str(path), source="session",
        ))
    return found


def _registered_clusters() -> list[ClusterInfo]:
    directory = registry_dir()
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob(f"{PREFIX}*.json")):
        try:
            entry = json.loads(path.read_text())
            address = entry["address"]
            token_file = entry["token_file"]
        except (OSError, ValueError, KeyError, TypeError):
            _drop(path)
            continue
        pid = entry.get("pid")
        backend = entry.get("backend") or "cellfleet"
        needs_token = backend == "cellfleet" or bool(token_file)
        if (pid and not _alive(int(pid))) or (needs_token and not Path(token_file).exists()):
            _drop(path)
            continue
        found.append(ClusterInfo(
            id=cluster_id(address), address=address, token_file=token_file,
            start_time=entry.get("start_time"), kernel_id=entry.get("kernel_id"),
            session_dir=entry.get("session_dir"), pid=pid, source="kernel",
            backend=backend, state_url=entry.get("state_url"),
        ))
    return found


def _drop(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def list_clusters() -> list[ClusterInfo]:
    """Every live cluster, kernel registrations first; dead registrations are deleted."""
    by_address: dict[str, ClusterInfo] = {}
    for cluster in _registered_clusters():
        by_address.setdefault(cluster.address, cluster)
    for cluster in _session_clusters():
        known = by_address.get(cluster.address)
        if known is None:
            by_address[cluster.address] = cluster
        elif known.session_dir is None:
            known.session_dir = cluster.session_dir
    return list(by_address.values())


def find_cluster(cid: str) -> ClusterInfo | None:
    for cluster in list_clusters():
        if cluster.id == cid:
            return cluster
    return None
