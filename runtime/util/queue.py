"""A first-in first-out queue shared by tasks and actors (Ray's ``ray.util.queue``).

The items live in an async actor holding an ``asyncio.Queue``: a blocked ``get`` or ``put``
waits on the actor's event loop without holding up other callers. ``Queue`` objects pickle
(the actor handle travels), so one queue can be passed to many tasks and actors.
"""

from __future__ import annotations

import asyncio
import queue as _stdlib_queue
from collections.abc import Iterable
from typing import Any

from .. import api
from ..actor import ActorClass

__all__ = ["Empty", "Full", "Queue"]


class Empty(_stdlib_queue.Empty):
    """``get`` found no item (non-blocking, or by the end of its timeout)."""


class Full(_stdlib_queue.Full):
    """``put`` found no room (non-blocking, or by the end of its timeout)."""


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class Queue:
    """A queue of at most ``maxsize`` items (0: unbounded), held by an actor.

    ``actor_options`` are the options of that actor (``num_cpus``, ``name``,
    ``lifetime``...). ``shutdown()`` ends it; so does the last handle going away.
    """

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        self.maxsize = maxsize
        options = {"num_cpus": 0, **(actor_options or {})}
        self.actor = ActorClass(_QueueActor, options).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """The number of items in the queue now."""
        return api.get(self._actor().qsize.remote())

    def qsize(self) -> int:
        return self.size()

    def empty(self) -> bool:
        return api.get(self._actor().empty.remote())

    def full(self) -> bool:
        return api.get(self._actor().full.remote())

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add an item; if the queue is full, wait for room (``block``, up to ``timeout``).

        Raises ``Full`` if there is no room (at once when ``block`` is False).
        """
        if not block:
            _plain(self._actor().put_nowait.remote(item))
            return
        _check_timeout(timeout)
        _plain(self._actor().put.remote(item, timeout))

    async def put_async(self, item: Any, block: bool = True,
                        timeout: float | None = None) -> None:
        """``put`` for asyncio code: await it instead of blocking the thread."""
        if not block:
            await _plain_async(self._actor().put_nowait.remote(item))
            return
        _check_timeout(timeout)
        await _plain_async(self._actor().put.remote(item, timeout))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Take the oldest item; if there is none, wait for one (``block``, up to ``timeout``).

        Raises ``Empty`` if there is none (at once when ``block`` is False).
        """
        if not block:
            return _plain(self._actor().get_nowait.remote())
        _check_timeout(timeout)
        return _plain(self._actor().get.remote(timeout))

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """``get`` for asyncio code: await it instead of blocking the thread."""
        if not block:
            return await _plain_async(self._actor().get_nowait.remote())
        _check_timeout(timeout)
        return await _plain_async(self._actor().get.remote(timeout))

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``."""
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add all ``items`` at once, or none of them (``Full``) if they do not all fit."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        _plain(self._actor().put_nowait_batch.remote(list(items)))

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Take ``num_items`` items at once, or none of them (``Empty``) if there are fewer."""
        if not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        return _plain(self._actor().get_nowait_batch.remote(num_items))

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """End the queue's actor; items still in it are lost. The queue is unusable after.

        As in Ray: ``force`` kills the actor at once; otherwise it exits behind the calls
        already sent to it, and is killed if it has not exited after ``grace_period_s``.
        """
        if self.actor is not None:
            if force:
                api.kill(self.actor)
            else:
                done = self.actor.__ray_terminate__.remote()
                _, not_done = api.wait([done], timeout=grace_period_s)
                if not_done:
                    api.kill(self.actor)
        self.actor = None

    def _actor(self) -> Any:
        if self.actor is None:
            raise RuntimeError("This queue has been shut down.")
        return self.actor


def _plain(ref: Any) -> Any:
    """``get(ref)``, raising the queue's own ``Empty``/``Full`` rather than a task error."""
    try:
        return api.get(ref)
    except Empty as exc:  # a RayTaskError(Empty) from the actor: raise the plain one
        raise Empty(*exc.args) from None
    except Full as exc:
        raise Full(*exc.args) from None


async def _plain_async(ref: Any) -> Any:
    try:
        return await ref
    except Empty as exc:
        raise Empty(*exc.args) from None
    except Full as exc:
        raise Full(*exc.args) from None


class _QueueActor:
    """The actor holding the items; its methods run on its event loop."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            raise Full(f"no room in the queue within {timeout}s") from None

    async def get(self, timeout: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            raise Empty(f"no item in the queue within {timeout}s") from None

    def put_nowait(self, item: Any) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Full(f"the queue is full ({self.maxsize} items)") from None

    def put_nowait_batch(self, items: list) -> None:
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            raise Full(f"Cannot add {len(items)} items to queue of size {self.queue.qsize()} "
                       f"and maxsize {self.maxsize}.")
        for item in items:
            self.queue.put_nowait(item)

    def get_nowait(self) -> Any:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            raise Empty("the queue is empty") from None

    def get_nowait_batch(self, num_items: int) -> list:
        if num_items > self.queue.qsize():
            raise Empty(f"Cannot get {num_items} items from queue of size "
                        f"{self.queue.qsize()}.")
        return [self.queue.get_nowait() for _ in range(num_items)]
