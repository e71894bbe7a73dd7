"""Identifiers: node, worker, task and object ids as raw bytes, printed as hex.

A task id is 16 bytes: an 8-byte prefix unique to the submitting process and an 8-byte
counter, so ids are made without coordination. An object id is its task id plus a 4-byte
index: index ``i >= 1`` is the task's i-th return value; ``put`` objects get a fresh task-like
id with index 0.
"""

from __future__ import annotations

import itertools
import os
import struct

__all__ = ["IdGenerator", "object_id_for", "random_id", "task_id_of"]

_COUNTER = struct.Struct(">Q")
_INDEX = struct.Struct(">I")


def random_id(size: int = 16) -> bytes:
    """A random id (nodes, workers)."""
    return os.urandom(size)


class IdGenerator:
    """Makes task ids unique across the cluster without asking anybody."""

    __slots__ = ("_prefix", "_counter")

    def __init__(self) -> None:
        self._prefix = os.urandom(8)
        self._counter = itertools.count(1)

    def task_id(self) -> bytes:
        return self._prefix + _COUNTER.pack(next(self._counter))


def object_id_for(task_id: bytes, index: int) -> bytes:
    """The id of return value ``index`` (1-based) of a task, or 0 for a put."""
    return task_id + _INDEX.pack(index)


def task_id_of(object_id: bytes) -> bytes:
    return object_id[:16]
