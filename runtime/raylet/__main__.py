"""``python -m cellfleet.raylet``: run one node's raylet.

It imports what it shares with its workers first (asyncio, the protocol, the messages, the
session), then forks its worker template (``forkserver``), then imports its own modules: the
template imports the worker runtime meanwhile, so a new node's first worker is ready about
when the raylet is, rather than a whole second start after it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from .. import _messages as m
from .._rpc import Connection, connect, serve
from .._service import (
    add_common_arguments,
    listening_socket,
    raise_fd_limit,
    reconnect_delays,
    run_service,
)
from .._session import Session
from .._shm import SharedArena
from ..core import peers, pin_cache  # noqa: F401 - shared with the workers: before the fork
from ..exceptions import RayError
from ..gcs import placement_groups  # noqa: F401 - shared with the workers: before the fork
from .forkserver import TemplateProcess, fork_template
from .pool_state import PoolLimits

if TYPE_CHECKING:
    import socket

    from .server import Raylet

logger = logging.getLogger("cellfleet.raylet")


async def _keep_gcs_connection(raylet: Raylet, args: argparse.Namespace, token: bytes,
                               registration: m.RegisterNode, stop: asyncio.Event) -> None:
    """Connect and register with the GCS; reconnect whenever the connection drops.

    The raylet subscribes to the cluster's resource changes before it registers, so the view
    in the registration's answer plus the broadcasts after it miss nothing.
    """

    def published(conn: Connection, msg: m.Publish) -> None:
        if msg.channel == "resources":
            raylet.resources_published(msg.data)
        elif msg.channel == "exits":  # an owner on another node: its objects here go too
            raylet.owner_exited(msg.data)
        elif msg.channel == "placement_groups":  # a group removed: refuse work sent to it
            raylet.placement_group_removed(msg.data)

    delays = reconnect_delays()
    while not stop.is_set():
        try:
            conn: Connection = await connect(args.gcs_address, token,
                                             {m.Publish: published, **raylet.gcs_handlers()},
                                             timeout=2.0)
            conn.send(m.Subscribe("resources"))
            conn.send(m.Subscribe("exits"))
            conn.send(m.Subscribe("placement_groups"))
            reply = await conn.request(registration)
        except ValueError as exc:  # refused for good (another cellfleet version)
            logger.error("the GCS at %s refused this node: %s", args.gcs_address, exc)
            stop.set()
            return
        except (ConnectionError, OSError, RayError) as exc:
            logger.info("waiting for the GCS at %s: %s", args.gcs_address, exc)
            await asyncio.sleep(next(delays))
            continue
        delays = reconnect_delays()
        raylet.gcs_connected(conn, reply.get("view", []))
        await conn.closed
        raylet.gcs_lost()
        logger.warning("lost the GCS connection; reconnecting")


def spill_directory(session: Path, node_id: bytes) -> str:
    """Where this node spills objects: ``CELLFLEET_SPILL_DIR`` (Ray's
    object_spilling_directory), else the session's ``spill`` folder, one folder per node."""
    root = os.environ.get("CELLFLEET_SPILL_DIR") or str(session / "spill")
    return os.path.join(root, node_id.hex()[:8])


WORKER_MEMORY_BUDGET = 64 * 2**20  # bytes of the node's memory the default cap allows a worker


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"{name}={value!r} is not a number; unset it or give a number") from None


def pool_limits(cpus: int) -> PoolLimits:
    """The worker pool's limits: Ray's defaults, overridable from the environment.

    ``CELLFLEET_WORKER_STARTUP_CONCURRENCY`` (default: the machine's cores),
    ``CELLFLEET_MAX_WORKERS`` (task workers; default: as many as fit in the machine's memory
    at 64 MiB each, at least 4 per CPU, at most 1,024) and ``CELLFLEET_IDLE_WORKER_TIMEOUT_S``
    (default 1 s).
    """
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    default_cap = max(4 * max(cpus, 1), min(1024, memory // WORKER_MEMORY_BUDGET))
    return PoolLimits(
        startup_concurrency=int(_env_number("CELLFLEET_WORKER_STARTUP_CONCURRENCY",
                                            os.cpu_count() or 1)),
        soft_limit=cpus,
        max_workers=int(_env_number("CELLFLEET_MAX_WORKERS", default_cap)),
        idle_timeout_s=_env_number("CELLFLEET_IDLE_WORKER_TIMEOUT_S", 1.0),
    )


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
    cpus = int(resources.get("CPU", 1))
    limits = pool_limits(cpus)
    raise_fd_limit()  # before the fork: the template's workers inherit the limit
    template = _start_template(session.path)
    from .object_store import ObjectStore  # the raylet's own modules, as the template imports
    from .server import Raylet
    from .worker_pool import WorkerPool

    async def serve_raylet(stop: asyncio.Event) -> None:
        token = session.token()
        store_name = f"{session.arena_prefix}{node_id.hex()[:8]}"
        arena = SharedArena.create(store_name, args.object_store_memory)
        sock = listening_socket(args)
        host, port = sock.getsockname()[:2]
        address = f"{host}:{port}"
        pool = WorkerPool(raylet_address=address, gcs_address=args.gcs_address,
                          node_id=node_id, session_dir=session.path, store_name=store_name,
                          template=template)
        prestart = args.prestart if args.prestart is not None else cpus
        raylet = Raylet(node_id=node_id, resources=resources,
                        store=ObjectStore(args.object_store_memory), store_name=store_name,
                        pool=pool, prestart=prestart, limits=limits, arena=arena,
                        token=token, spill_dir=spill_directory(session.path, node_id))
        raylet.serve_transfers(address)
        server, _ = await serve(raylet.handlers(), token, sock=sock,
                                on_close=raylet.connection_closed)
        registration = m.RegisterNode(node_id, address, resources, store_name,
                                      args.object_store_memory, str(session.path), __version__)
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(_keep_gcs_connection(raylet, args, token, registration, stop)),
            loop.create_task(raylet.heartbeat_loop()),
            loop.create_task(raylet.maintain_loop()),
        ]
        logger.info("node %s serving on %s", node_id.hex(), address)
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            server.close()
            raylet.close_transfers()
            await pool.stop()
            arena.close()
            arena.unlink()
            shutil.rmtree(raylet.spill_dir, ignore_errors=True)

    run_service("raylet", args, serve_raylet)


def _start_template(session_dir: Path) -> tuple[TemplateProcess, socket.socket] | None:
    """Fork the worker template, unless ``CELLFLEET_WORKER_TEMPLATE=0`` (None: the pool then
    starts one itself, or none)."""
    if os.environ.get("CELLFLEET_WORKER_TEMPLATE", "1") == "0":
        return None
    try:
        return fork_template(session_dir)
    except OSError as exc:
        logger.warning("could not fork the worker template (%s): starting one", exc)
        return None


if __name__ == "__main__":
    main()
