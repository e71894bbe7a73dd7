"""``python -m cellfleet.gcs``: run the GCS process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

from .._service import add_common_arguments, listening_socket, run_service

logger = logging.getLogger("cellfleet.gcs")

STORAGE_ENV = "CELLFLEET_GCS_STORAGE"
NODE_TIMEOUT_ENV = "CELLFLEET_NODE_TIMEOUT_S"


def _node_timeout(default: float) -> float:
    """Seconds without a heartbeat before a node is declared dead (``CELLFLEET_NODE_TIMEOUT_S``)."""
    value = os.environ.get(NODE_TIMEOUT_ENV)
    if not value:
        return default
    try:
        timeout = float(value)
    except ValueError:
        timeout = 0.0
    if not timeout > 0:
        raise SystemExit(f"{NODE_TIMEOUT_ENV}={value!r} is not a positive number of seconds; "
                         f"unset it (default {default:g}) or give one")
    return timeout


def main() -> None:
    parser = argparse.ArgumentParser(prog="cellfleet.gcs")
    add_common_arguments(parser)
    parser.add_argument("--storage", default=os.environ.get(STORAGE_ENV),
                        help=f"memory (the default) or redis://:PASSWORD@host:port; "
                             f"also {STORAGE_ENV}, which keeps a password off the command line")
    parser.add_argument("--cluster-name", default="default")
    args = parser.parse_args()
    # Listen first, then import the server: the cluster's processes reconnecting to a
    # restarted GCS wait in the backlog while it loads, instead of backing off and knocking.
    sock = listening_socket(args)
    from .._rpc import serve
    from .._session import Session
    from .server import NODE_TIMEOUT_S, GcsServer
    from .storage import open_storage, redact_url

    session = Session(Path(args.session_dir))
    node_timeout = _node_timeout(NODE_TIMEOUT_S)

    async def serve_gcs(stop: asyncio.Event) -> None:
        storage = await open_storage(args.storage, args.cluster_name, session.token())
        gcs = GcsServer(storage, node_timeout)
        await gcs.load()
        server, address = await serve(
            gcs.handlers(), session.token(), sock=sock, on_close=gcs.connection_closed,
        )
        logger.info("serving on %s (storage: %s)", address,
                    redact_url(args.storage) if args.storage else "memory")
        monitor = asyncio.get_running_loop().create_task(gcs.monitor_heartbeats())
        await stop.wait()
        monitor.cancel()
        server.close()
        try:
            await storage.destroy()  # a clean stop ends the cluster: its tables go with it
        except Exception as exc:  # Redis went away first: nothing more to do about it
            logger.warning("could not delete the cluster's tables from storage: %s", exc)
        await storage.close()

    run_service("gcs", args, serve_gcs)


if __name__ == "__main__":
    main()
