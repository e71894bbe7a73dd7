"""``python -m cellfleet.gcs``: run the GCS process."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from .._rpc import serve
from .._service import add_common_arguments, listening_socket, run_service
from .._session import Session
from .server import GcsServer
from .storage import open_storage

logger = logging.getLogger("cellfleet.gcs")


def main() -> None:
    parser = argparse.ArgumentParser(prog="cellfleet.gcs")
    add_common_arguments(parser)
    parser.add_argument("--storage", default=None, help="None for memory, or redis://host:port")
    parser.add_argument("--cluster-name", default="default")
    args = parser.parse_args()
    session = Session(Path(args.session_dir))

    async def serve_gcs(stop: asyncio.Event) -> None:
        storage = await open_storage(args.storage, args.cluster_name)
        gcs = GcsServer(storage)
        await gcs.load()
        server, address = await serve(
            gcs.handlers(), session.token(), sock=listening_socket(args),
            on_close=gcs.connection_closed,
        )
        logger.info("serving on %s (storage: %s)", address, args.storage or "memory")
        monitor = asyncio.get_running_loop().create_task(gcs.monitor_heartbeats())
        await stop.wait()
        monitor.cancel()
        server.close()
        await storage.close()

    run_service("gcs", args, serve_gcs)


if __name__ == "__main__":
    main()
