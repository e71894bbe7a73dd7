"""What every runtime process's ``main`` shares: logging, the event loop, stopping cleanly."""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import resource
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator

from ._process import watch_parent
from ._tuning import tune_process

__all__ = ["add_common_arguments", "listening_socket", "raise_fd_limit", "reconnect_delays",
           "run_service"]

logger = logging.getLogger(__name__)


def reconnect_delays(first: float = 0.02, most: float = 0.1) -> Iterator[float]:
    """Seconds to wait before each attempt to reach the GCS again: doubling from ``first``
    to ``most``, each jittered by ±25% so that a cluster's processes do not all knock at
    once when a restarted GCS comes back."""
    delay = first
    while True:
        yield delay * random.uniform(0.75, 1.25)
        delay = min(most, delay * 2)


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit, as Ray does.

    Each peer, leased worker and zero-copy mapping holds a descriptor, and distributions
    start processes at a soft limit of 1,024. Returns the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError) as exc:
            logger.info("could not raise the open-file limit from %s: %s", soft, exc)
    return soft


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--session-dir", required=True)
    parser.add_argument("--listen-fd", type=int, default=None,
                        help="an already listening socket inherited from the parent")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifeline-fd", type=int, default=None,
                        help="exit when this pipe closes (the parent died)")


def listening_socket(args: argparse.Namespace) -> socket.socket:
    """The socket to serve on: inherited, or bound to ``--host``/``--port``."""
    if args.listen_fd is not None:
        return socket.socket(fileno=args.listen_fd)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(512)
    return sock


def run_service(
    name: str,
    args: argparse.Namespace,
    main: Callable[[asyncio.Event], Awaitable[None]],
) -> None:
    """Run ``main(stop_event)`` until SIGTERM/SIGINT or the parent's death sets the event."""
    raise_fd_limit()
    tune_process(runtime=True)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s"
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if args.lifeline_fd is not None:
            watch_parent(args.lifeline_fd, stop.set)
        await main(stop)

    asyncio.run(runner())
