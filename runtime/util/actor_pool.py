"""``ActorPool``: spread work over a fixed set of actors (Ray's ``ray.util.ActorPool``).

Each submission is ``fn(actor, value)`` on an idle actor, which must return the ObjectRef (or
list of ObjectRefs) of one actor call. A submission made while every actor is busy waits in
line and starts when an actor's result is collected. Results come back in submission order
(``get_next``) or as they finish (``get_next_unordered``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .. import api
from ..core.object_ref import ObjectRef

__all__ = ["ActorPool"]

_TIMED_OUT = "Timed out waiting for result"


class _Call:
    """One started submission: its result ref(s), its index and the actor running it."""

    __slots__ = ("index", "actor", "result")

    def __init__(self, index: int, actor: Any, result: Any) -> None:
        self.index = index
        self.actor = actor
        self.result = result

    def refs(self) -> list[ObjectRef]:
        return list(self.result) if isinstance(self.result, (list, tuple)) else [self.result]


class ActorPool:
    """A pool of actors taking submissions in turn.

    >>> pool = ActorPool([Worker.remote(), Worker.remote()])
    >>> list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4]))
    [2, 4, 6, 8]
    """

    def __init__(self, actors: Iterable[Any]) -> None:
        self._idle: list[Any] = list(actors)
        self._calls: dict[int, _Call] = {}  # started, not yet collected; by submission index
        # submitted while every actor was busy (Ray's name for it)
        self._pending_submits: deque[tuple[Callable, Any]] = deque()
        self._started = 0  # index the next started submission gets

    # -- submitting -----------------------------------------------------------------------

    def submit(self, fn: Callable[[Any, Any], Any], value: Any) -> None:
        """Run ``fn(actor, value)`` on an idle actor, or queue it until one is free."""
        if not self._idle:
            self._pending_submits.append((fn, value))
            return
        actor = self._idle.pop()
        result = fn(actor, value)
        self._calls[self._started] = _Call(self._started, actor, result)
        self._started += 1

    def map(self, fn: Callable[[Any, Any], Any], values: Iterable[Any]) -> Iterator[Any]:
        """Apply ``fn`` to every value; yields the results in the order of ``values``.

        Results of earlier submissions not collected yet are discarded first, as in Ray.
        """
        self._discard_outstanding()
        for value in values:
            self.submit(fn, value)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next()

        return results()

    def map_unordered(self, fn: Callable[[Any, Any], Any],
                      values: Iterable[Any]) -> Iterator[Any]:
        """Like ``map``, but yields each result as soon as it is ready."""
        self._discard_outstanding()
        for value in values:
            self.submit(fn, value)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next_unordered()

        return results()

    def _discard_outstanding(self) -> None:
        while self.has_next():
            try:
                self.get_next(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass

    # -- collecting -----------------------------------------------------------------------

    def has_next(self) -> bool:
        """Whether a started submission's result is still to be collected."""
        return bool(self._calls)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The result of the oldest submission not collected yet (by submission order).

        ``timeout``: raise ``TimeoutError`` if it is not ready by then; with
        ``ignore_if_timedout`` the submission is dropped from the pool too (its actor is free
        again, its result never returned). A remote error is raised here, and the actor is
        free again all the same.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        call = self._calls[min(self._calls)]
        if timeout is not None:
            ready, _ = api.wait(call.refs(), num_returns=len(call.refs()), timeout=timeout)
            if len(ready) < len(call.refs()):
                if ignore_if_timedout:
                    self._collect(call)
                    raise TimeoutError(f"{_TIMED_OUT}. The task {call.result} has been "
                                       "ignored.")
                raise TimeoutError(_TIMED_OUT)
        self._collect(call)
        return api.get(call.result)

    def get_next_unordered(self, timeout: float | None = None,
                           ignore_if_timedout: bool = False) -> Any:
        """The result of whichever started submission finishes first.

        ``timeout`` and ``ignore_if_timedout`` as in ``get_next`` (what is dropped on a
        timeout is the oldest submission).
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        first_ref = {call.refs()[0]: call for call in self._calls.values()}
        ready, _ = api.wait(list(first_ref), num_returns=1, timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                call = self._calls[min(self._calls)]
                self._collect(call)
                raise TimeoutError(f"{_TIMED_OUT}. The task {call.result} has been ignored.")
            raise TimeoutError(_TIMED_OUT)
        call = first_ref[ready[0]]
        self._collect(call)
        return api.get(call.result)

    def _collect(self, call: _Call) -> None:
        """The call's result is being taken: its actor is free for the next submission."""
        del self._calls[call.index]
        self._return_actor(call.actor)

    def _return_actor(self, actor: Any) -> None:
        self._idle.append(actor)
        if self._pending_submits:
            self.submit(*self._pending_submits.popleft())

    # -- membership -----------------------------------------------------------------------

    def has_free(self) -> bool:
        """Whether an actor is idle and no submission is waiting for one."""
        return bool(self._idle) and not self._pending_submits

    def pop_idle(self) -> Any | None:
        """Take an idle actor out of the pool (None if none is free)."""
        if self.has_free():
            return self._idle.pop()
        return None

    def push(self, actor: Any) -> None:
        """Add an actor to the pool; it takes a waiting submission at once if there is one."""
        busy = [call.actor for call in self._calls.values()]
        if actor in self._idle or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)
