"""``python -m cellfleet.worker``: a worker process, started by its node's raylet."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import _context
from .._process import watch_parent
from .._session import Session
from ..core.core_worker import CoreWorker
from .executor import TaskExecutor
from .output import capture_output


def main() -> None:
    parser = argparse.ArgumentParser(prog="cellfleet.worker")
    parser.add_argument("--raylet-address", required=True)
    parser.add_argument("--gcs-address", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--session-dir", required=True)
    parser.add_argument("--store-name", required=True)
    parser.add_argument("--lifeline-fd", type=int, default=None)
    args = parser.parse_args()

    session = Session(Path(args.session_dir))
    host = args.raylet_address.rpartition(":")[0]
    core = CoreWorker(kind="worker", token=session.token(), gcs_address=args.gcs_address,
                      raylet_address=args.raylet_address,
                      worker_id=bytes.fromhex(args.worker_id), host=host)
    _context.core = core
    executor = TaskExecutor(core)
    core.executor = executor
    core.start(register_job=False, log_to_driver=False)

    def die() -> None:
        os._exit(1)

    async def watch() -> None:
        if args.lifeline_fd is not None:
            watch_parent(args.lifeline_fd, die)
        core.raylet.closed.add_done_callback(lambda _: die())

    core.run(watch())
    executor.streams = capture_output(core)
    executor.run_forever()


if __name__ == "__main__":
    main()
