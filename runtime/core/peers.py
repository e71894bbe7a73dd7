"""Connections from one core worker to the others (Ray's core worker client pool).

One cached connection per address, opened on first use. Owners that pushed tasks to this
process are reached over the connection they opened (``inbound``), so a message to an owner
(a borrow, say) travels behind the task results already sent on it and arrives after them.
Runs on the core worker's I/O thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .. import _messages as m
from .._rpc import Connection, HandlerTable, connect

__all__ = ["PeerCache"]


class PeerCache:
    """Cached connections to other core workers, by address."""

    def __init__(self, address: str, token: bytes, handlers: HandlerTable) -> None:
        self.address = address  # this process's own: messages to it go nowhere
        self._token = token
        self._handlers = handlers
        self._connections: dict[str, asyncio.Future] = {}
        # Owners that pushed tasks here, by address: messages to them use that connection.
        self.inbound: dict[str, Connection] = {}

    def connect(self, address: str, worker_id: bytes | None = None) -> asyncio.Future:
        """A (cached) connection to another core worker; with ``worker_id``, only to that one."""
        fut = self._connections.get(address)
        if fut is None or (fut.done() and (
                fut.exception() or not fut.result().is_open
                or (worker_id is not None and fut.result().server_id != worker_id))):
            fut = asyncio.ensure_future(self._open(address, worker_id))
            self._connections[address] = fut
        return fut

    def forget(self, address: str) -> None:
        """Drop the cached connection to ``address`` if it is closed (its process is gone)."""
        fut = self._connections.get(address)
        if fut is not None and fut.done() and (fut.exception() or not fut.result().is_open):
            del self._connections[address]

    async def _open(self, address: str, worker_id: bytes | None) -> Connection:
        conn = await connect(address, self._token, self._handlers, expect_id=worker_id)
        conn.state = set()  # function ids already defined on this connection
        return conn

    def send(self, address: str, message: m.Message) -> None:
        """Send without waiting, over the owner's own connection if it has one to us."""
        if address == self.address:
            return
        conn = self.inbound.get(address)
        if conn is not None and conn.is_open:
            conn.send(message)
            return
        fut = self.connect(address)
        if fut.done():
            if not fut.exception():
                fut.result().send(message)
            return
        fut.add_done_callback(lambda f: None if f.exception() else f.result().send(message))

    def request(self, address: str, message: m.Message) -> asyncio.Future:
        """A request over the connection ``send`` would use."""
        conn = self.inbound.get(address)
        if conn is not None and conn.is_open:
            return conn.request(message)

        async def ask() -> Any:
            return await (await self.connect(address)).request(message)

        return asyncio.ensure_future(ask())

    def close(self) -> None:
        for fut in self._connections.values():
            if fut.done() and not fut.exception():
                fut.result().close()
