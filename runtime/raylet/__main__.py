"""``python -m cellfleet.raylet``: run one node's raylet."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path

from .. import _messages as m
from .._rpc import Connection, connect, serve
from .._service import add_common_arguments, listening_socket, run_service
from .._session import Session
from .._shm import SharedArena
from ..exceptions import RayError
from .object_store import ObjectStore
from .server import Raylet
from .worker_pool import WorkerPool

logger = logging.getLogger("cellfleet.raylet")


async def _keep_gcs_connection(raylet: Raylet, args: argparse.Namespace, token: bytes,
                               registration: m.RegisterNode, stop: asyncio.Event) -> None:
    """Connect and register with the GCS; reconnect whenever the connection drops."""
    while not stop.is_set():
        try:
            conn: Connection = await connect(args.gcs_address, token, timeout=2.0)
            await conn.request(registration)
        except (ConnectionError, OSError, RayError) as exc:
            logger.info("waiting for the GCS at %s: %s", args.gcs_address, exc)
            await asyncio.sleep(0.05 if raylet.gcs is None else 0.5)
            continue
        raylet.gcs = conn
        await conn.closed
        logger.warning("lost the GCS connection; reconnecting")


def main() -> None:
    parser = argparse.ArgumentParser(prog="cellfleet.raylet")
    add_common_arguments(parser)
    parser.add_argument("--gcs-address", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--resources", required=True, help="JSON: {'CPU': 2, 'GPU': 0, ...}")
    parser.add_argument("--object-store-memory", type=int, required=True)
    parser.add_argument("--prestart", type=int, default=None)
    args = parser.parse_args()
    session = Session(Path(args.session_dir))
    node_id = bytes.fromhex(args.node_id)
    resources = json.loads(args.resources)

    async def serve_raylet(stop: asyncio.Event) -> None:
        token = session.token()
        store_name = f"cellfleet-{session.name}-{node_id.hex()[:8]}"
        arena = SharedArena.create(store_name, args.object_store_memory)
        sock = listening_socket(args)
        host, port = sock.getsockname()[:2]
        address = f"{host}:{port}"
        pool = WorkerPool(raylet_address=address, gcs_address=args.gcs_address,
                          node_id=node_id, session_dir=session.path, store_name=store_name)
        prestart = args.prestart if args.prestart is not None else int(resources.get("CPU", 1))
        raylet = Raylet(node_id=node_id, resources=resources,
                        store=ObjectStore(args.object_store_memory), store_name=store_name,
                        pool=pool, prestart=prestart)
        server, _ = await serve(raylet.handlers(), token, sock=sock,
                                on_close=raylet.connection_closed)
        registration = m.RegisterNode(node_id, address, resources, store_name,
                                      args.object_store_memory, str(session.path))
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(_keep_gcs_connection(raylet, args, token, registration, stop)),
            loop.create_task(raylet.heartbeat_loop()),
            loop.create_task(pool.reap(raylet.worker_failed_to_start)),
        ]
        logger.info("node %s serving on %s", node_id.hex(), address)
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            server.close()
            await pool.stop()
            arena.close()
            arena.unlink()

    run_service("raylet", args, serve_raylet)


if __name__ == "__main__":
    main()
