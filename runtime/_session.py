"""Session directories: where a cluster keeps its token, logs and address on disk.

Layout under ``$CELLFLEET_TMPDIR`` (default ``/tmp/cellfleet-<uid>``, a name no import can shadow)::

    session_<time>_<pid>/
        token            the cluster's secret (mode 0600)
        cluster.json     {"gcs_address": ..., "raylet_address": ..., "pid": ..., "started": ...}
        logs/            stdout/stderr of every runtime process
    current_cluster      path of the session started by ``cellfleet start`` (for address="auto")
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Session", "find_token", "root_dir"]

TOKEN_BYTES = 32


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
    """One cluster's directory on this machine."""

    path: Path

    @classmethod
    def create(cls) -> Session:
        root = _private_root()
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        path = root / f"session_{stamp}_{os.getpid()}_{secrets.token_hex(3)}"
        path.mkdir(mode=0o700)
        (path / "logs").mkdir(mode=0o700)
        fd = os.open(path / "token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(TOKEN_BYTES))
        return cls(path)

    @property
    def name(self) -> str:
        return self.path.name

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
