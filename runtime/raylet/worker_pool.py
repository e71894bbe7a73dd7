"""The raylet's worker processes: started ahead of need, registered, reaped when they exit."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .._process import LifelinePipe, spawn
from .._rpc import Connection

__all__ = ["WorkerPool", "WorkerProcess"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class WorkerProcess:
    worker_id: bytes
    process: subprocess.Popen
    conn: Connection | None = None
    address: str = ""


class WorkerPool:
    """Starts ``python -m cellfleet.worker`` processes tied to this raylet's life."""

    def __init__(self, *, raylet_address: str, gcs_address: str, node_id: bytes,
                 session_dir: Path, store_name: str) -> None:
        self._args = [
            "--raylet-address", raylet_address,
            "--gcs-address", gcs_address,
            "--node-id", node_id.hex(),
            "--session-dir", str(session_dir),
            "--store-name", store_name,
        ]
        self._logs = session_dir / "logs"
        self._lifeline = LifelinePipe()
        self.workers: dict[bytes, WorkerProcess] = {}

    def start(self, worker_id: bytes) -> WorkerProcess:
        """Start the process of a worker that will register as ``worker_id``."""
        proc = spawn(
            "cellfleet.worker",
            [*self._args, "--worker-id", worker_id.hex()],
            lifeline=self._lifeline,
            log_path=self._logs / f"worker-{worker_id.hex()[:12]}.log",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        worker = WorkerProcess(worker_id, proc)
        self.workers[worker_id] = worker
        return worker

    def registered(self, worker_id: bytes, conn: Connection, address: str) -> bool:
        worker = self.workers.get(worker_id)
        if worker is None:
            return False
        worker.conn = conn
        worker.address = address
        return True

    def remove(self, worker_id: bytes) -> WorkerProcess | None:
        return self.workers.pop(worker_id, None)

    def kill(self, worker_id: bytes) -> None:
        worker = self.workers.get(worker_id)
        if worker is not None and worker.process.poll() is None:
            worker.process.send_signal(signal.SIGKILL)

    def exited_unregistered(self) -> list[bytes]:
        """Workers that exited before registering (their connection never existed)."""
        exited = []
        for worker_id, worker in self.workers.items():
            if worker.conn is None and worker.process.poll() is not None:
                logger.warning("worker %s exited with %s before registering",
                               worker_id.hex()[:12], worker.process.returncode)
                exited.append(worker_id)
        return exited

    async def stop(self, timeout: float = 2.0) -> None:
        """Terminate every worker, then kill what is left after ``timeout``."""
        procs = [w.process for w in self.workers.values() if w.process.poll() is None]
        for p in procs:
            p.terminate()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(p.poll() is None for p in procs) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self._lifeline.close()
