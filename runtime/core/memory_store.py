"""The in-process memory store: the values of objects this process knows, and who waits for them.

Ray's CoreWorkerMemoryStore. A value is a payload (inline bytes, or where in shared memory the
object is) kept on the reference counter's entry, under its lock, so a ref and its value are one
lookup. Threads blocked in ``get``/``wait`` wait on one counting ``Waiter`` per call; the I/O
thread's continuations (a task whose arguments are ready, an owner's answer to a borrower) are
callbacks on the entry. Putting a payload wakes both; nothing here does I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .._serialization import KIND_ERROR, serialize
from .reference_counter import ObjectEntry

__all__ = ["MemoryStore", "Waiter", "error_payload", "is_error"]


def is_error(payload: list) -> bool:
    """Does the payload hold an error (a failed task's, or a lost object's)?"""
    return (payload[1][0] if payload[0] == "i" else payload[1]) == KIND_ERROR


def error_payload(exc: BaseException) -> list:
    """An inline payload holding ``exc``: what ``get`` raises."""
    return ["i", serialize(exc, KIND_ERROR).inline()]


class Waiter:
    """Wakes a thread waiting on objects once ``needed`` of them are ready (or, with
    ``stop_on_error``, once one of them holds an error).

    A held lock the I/O thread releases: lighter than ``threading.Event`` (no Condition),
    which matters on the ``get`` hot path. ``one_ready`` is called under the store's lock,
    once per entry the waiter was added to.
    """

    __slots__ = ("_lock", "_woken", "needed", "failed", "_stop_on_error")

    def __init__(self, needed: int, stop_on_error: bool = False) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._woken = False
        self.needed = needed
        self.failed = False
        self._stop_on_error = stop_on_error

    def one_ready(self, error: bool = False) -> None:
        self.needed -= 1
        if error and self._stop_on_error:
            self.failed = True
        if not self._woken and (self.needed <= 0 or self.failed):
            self._woken = True
            self._lock.release()

    def wait(self, timeout: float | None) -> bool:
        return self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0))


class MemoryStore:
    """Ready payloads and their waiters; ``lock`` is the reference counter's."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock

    def wait(self, entries: list[ObjectEntry], count: int, timeout: float | None, *,
             stop_on_error: bool = False, on_block: Callable[[], None] | None = None,
             on_unblock: Callable[[], None] | None = None) -> bool | None:
        """Block until ``count`` entries are ready: True; False as soon as one holds an error
        (with ``stop_on_error``); None at the timeout. ``on_block``/``on_unblock`` run around
        the wait when it has to wait at all. O(n) in the entries, however values trickle in.
        """
        with self.lock:
            pending = [e for e in entries if e.payload is None]
            needed = min(count, len(entries)) - (len(entries) - len(pending))
            if needed <= 0:
                return True
            if stop_on_error and any(
                    e.payload is not None and is_error(e.payload) for e in entries):
                return False
            waiter = Waiter(needed, stop_on_error)
            for entry in pending:
                entry.waiters.append(waiter)
        if on_block is not None:
            on_block()
        try:
            waiter.wait(timeout)
            with self.lock:  # off the entries still pending first, however it woke
                for entry in pending:
                    if entry.payload is None:
                        entry.waiters.remove(waiter)
                if waiter.failed:
                    return False
                return True if waiter.needed <= 0 else None
        finally:
            if on_unblock is not None:
                on_unblock()

    def put(self, entry: ObjectEntry, payload: list) -> None:
        """The object's value is here: wake its waiters, then run its callbacks."""
        with self.lock:
            entry.payload = payload
            waiters, entry.waiters = entry.waiters, []
            callbacks, entry.callbacks = entry.callbacks, []
            if waiters:
                failed = is_error(payload)
                for waiter in waiters:
                    waiter.one_ready(failed)
        for callback in callbacks:
            callback(entry)
