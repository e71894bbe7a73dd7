"""Session directories: where a cluster keeps its token, logs and address on disk.

Layout under ``$CELLFLEET_TMPDIR`` (default ``/tmp/cellfleet-<uid>``, a name no import can shadow)::

    session_<time>_<pid>/
        token            the cluster's secret (mode 0600)
        lock             flock()ed by the session's processes for as long as any of them lives
        cluster.json     {"gcs_address": ..., "raylet_address": ..., "pid": ..., "started": ...}
        logs/            stdout/stderr of every runtime process
    current_cluster      path of the session started by ``cellfleet start`` (for address="auto")

A session is dead once nothing holds its lock: the kernel drops the lock with the last process
holding it, however it ended (``kill -9``, the OOM killer). :func:`reclaim_dead_sessions`,
run before a new head starts, removes the ``/dev/shm`` arenas of dead sessions (a raylet killed
with SIGKILL cannot) and all but the newest few of their directories (kept for their logs).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ._shm import SHM_DIR

__all__ = ["Session", "find_token", "reclaim_dead_sessions", "root_dir"]

logger = logging.getLogger(__name__)

TOKEN_BYTES = 32
LOCK_FILE = "lock"
KEEP_DEAD_SESSIONS = 5  # directories of dead sessions kept for their logs


def root_dir() -> Path:
    return Path(os.environ.get("CELLFLEET_TMPDIR") or f"/tmp/cellfleet-{os.getuid()}")


def _private_root() -> Path:
    """The session root, created 0700; refused when another user could write to it."""
    root = root_dir()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = root.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise PermissionError(
            f"the session directory {root} is writable by other users or not yours: remove "
            "it, or set CELLFLEET_TMPDIR to a private directory"
        )
    return root


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Session:
    """One cluster's directory on this machine (``lock_fd``: the creator's hold on its lock)."""

    path: Path
    lock_fd: int | None = field(default=None, compare=False, repr=False)

    @classmethod
    def create(cls) -> Session:
        """A new session directory, locked; it appears under its name only once locked."""
        root = _private_root()
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        name = f"session_{stamp}_{os.getpid()}_{secrets.token_hex(3)}"
        staging = root / f".{name}"
        staging.mkdir(mode=0o700)
        (staging / "logs").mkdir(mode=0o700)
        fd = os.open(staging / "token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(TOKEN_BYTES))
        lock_fd = os.open(staging / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        staging.rename(root / name)
        return cls(root / name, lock_fd)

    def release(self) -> None:
        """Drop this process's hold on the lock (the session's children may still hold it)."""
        fd = self.lock_fd
        if fd is not None:
            object.__setattr__(self, "lock_fd", None)
            os.close(fd)

    def remove_arenas(self) -> int:
        """Unlink the session's shared-memory arenas (only once its raylets are gone)."""
        removed = 0
        uid = os.getuid()
        for arena in Path(SHM_DIR).glob(f"{self.arena_prefix}*"):
            try:
                if arena.stat().st_uid == uid:
                    arena.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def arena_prefix(self) -> str:
        """Names of the session's arenas in ``/dev/shm`` start with this."""
        return f"cellfleet-{self.name}-"

    @property
    def token_file(self) -> Path:
        return self.path / "token"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def token(self) -> bytes:
        return self.token_file.read_text().strip().encode()

    def write_info(self, **info: object) -> None:
        tmp = self.path / "cluster.json.tmp"
        tmp.write_text(json.dumps(info))
        tmp.replace(self.path / "cluster.json")

    def info(self) -> dict:
        try:
            return json.loads((self.path / "cluster.json").read_text())
        except (OSError, ValueError):
            return {}

    def mark_current(self) -> None:
        """Make this the session ``address="auto"`` finds."""
        tmp = root_dir() / f"current_cluster.{os.getpid()}"
        tmp.write_text(str(self.path))
        tmp.replace(root_dir() / "current_cluster")

    def is_running(self) -> bool:
        """True while every process the session's head started is alive."""
        pids = self.info().get("pids") or []
        return bool(pids) and all(_alive(pid) for pid in pids)

    @staticmethod
    def current() -> Session | None:
        try:
            path = Path((root_dir() / "current_cluster").read_text().strip())
        except OSError:
            return None
        return Session(path) if (path / "cluster.json").exists() else None

    @staticmethod
    def clear_current(path: Path) -> None:
        marker = root_dir() / "current_cluster"
        try:
            if Path(marker.read_text().strip()) == path:
                marker.unlink()
        except OSError:
            pass


_LIVE = -1


def _lock_if_dead(session: Session) -> int | None:
    """For a session none of whose processes lives: an fd holding its lock (None for a
    session made before sessions had locks, whose recorded pids are all gone); else ``_LIVE``."""
    try:
        fd = os.open(session.path / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        pids = session.info().get("pids")
        return None if pids and not any(_alive(pid) for pid in pids) else _LIVE
    except OSError:
        return _LIVE
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return _LIVE
    return fd


def _created(path: Path) -> int:
    try:
        return (path / "token").stat().st_mtime_ns
    except OSError:
        return 0


def reclaim_dead_sessions(keep: int = KEEP_DEAD_SESSIONS) -> tuple[int, int]:
    """Remove the arenas of this user's dead sessions and all but the ``keep`` newest of their
    directories; returns how many arenas and directories went."""
    root = _private_root()
    arenas = dirs = 0
    dead: list[tuple[Session, int | None]] = []
    for path in root.glob("session_*"):
        if not path.is_dir() or path.is_symlink():
            continue
        session = Session(path)
        fd = _lock_if_dead(session)
        if fd != _LIVE:
            dead.append((session, fd))
    dead.sort(key=lambda item: _created(item[0].path), reverse=True)
    for i, (session, fd) in enumerate(dead):
        try:
            arenas += session.remove_arenas()
            if i >= keep:
                shutil.rmtree(session.path, ignore_errors=True)
                dirs += 1
        finally:
            if fd is not None:
                os.close(fd)
    if arenas or dirs:
        logger.info("reclaimed %d arena(s) and %d directory(ies) of dead sessions in %s",
                    arenas, dirs, root)
    return arenas, dirs


def find_token(gcs_address: str) -> bytes:
    """The token for a cluster: from the environment, or from a session on this machine."""
    if os.environ.get("CELLFLEET_TOKEN"):
        return os.environ["CELLFLEET_TOKEN"].encode()
    if os.environ.get("CELLFLEET_TOKEN_FILE"):
        return Path(os.environ["CELLFLEET_TOKEN_FILE"]).read_text().strip().encode()
    root = root_dir()
    if root.is_dir():
        candidates = [Session(path) for path in root.glob("session_*")]
        current = Session.current()
        if current is not None:
            candidates.insert(0, current)
        for session in candidates:
            if session.info().get("gcs_address") == gcs_address and session.is_running():
                return session.token()
    raise ConnectionError(
        f"no token for the cluster at {gcs_address}: set CELLFLEET_TOKEN (or "
        "CELLFLEET_TOKEN_FILE) to the contents of the 'token' file in its session directory"
    )
