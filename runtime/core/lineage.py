"""Lineage: what an owner keeps so that it can re-run the task that made a lost object.

When every copy of a task's output is lost (its node died), the owner runs the task again
from its spec, within ``max_retries`` (Ray's lineage reconstruction). That needs the task's
arguments still alive, so a finished task's arguments stay pinned while any of its outputs is
referenced: this table holds them and says when to let them go. It is bounded by count
(``MAX_LINEAGE`` tasks, ``CELLFLEET_MAX_LINEAGE``) and by the memory its task specs take
(``MAX_LINEAGE_BYTES``, ``CELLFLEET_MAX_LINEAGE_BYTES``, Ray's ``max_lineage_bytes``): past
either, the oldest records are evicted, their arguments released, and their outputs can no
longer be rebuilt (``ObjectReconstructionFailedLineageEvictedError``). A state class with no
I/O: the core worker feeds it and releases what it answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import exceptions
from .._graveyard import limit_from_env
from .task_spec import TaskSpec

__all__ = ["MAX_LINEAGE", "MAX_LINEAGE_BYTES", "LineageTable"]

MAX_LINEAGE = 10_000  # finished tasks whose arguments are kept for reconstruction
MAX_LINEAGE_BYTES = 1 << 30  # of their specs (inline arguments): Ray's max_lineage_bytes
SPEC_OVERHEAD = 256  # bytes a spec takes beyond its inline arguments


@dataclass(slots=True)
class _Record:
    spec: TaskSpec
    submitted: list[bytes]  # the objects pinned for it (arguments, refs inside them)
    outputs: int  # its return objects still referenced
    size: int  # bytes of its spec


class LineageTable:
    """Finished tasks that can still be re-run, by task id."""

    def __init__(self, limit: int | None = None, max_bytes: int | None = None) -> None:
        self.limit = limit if limit is not None else limit_from_env(
            "CELLFLEET_MAX_LINEAGE", MAX_LINEAGE)
        self.max_bytes = max_bytes if max_bytes is not None else limit_from_env(
            "CELLFLEET_MAX_LINEAGE_BYTES", MAX_LINEAGE_BYTES)
        self._records: dict[bytes, _Record] = {}  # oldest first
        self.bytes = 0  # of the specs kept
        self.evicted = 0  # records evicted to stay in bounds (their outputs cannot be rebuilt)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, task_id: bytes) -> bool:
        return task_id in self._records

    def finished(self, spec: TaskSpec, submitted: list[bytes], outputs: int) -> list[bytes]:
        """A task finished with ``outputs`` return objects still referenced; the objects to
        release now (all of ``submitted`` unless they are kept for reconstruction)."""
        record = self._records.get(spec.task_id)
        if record is not None:  # a re-run: the first run's pins still hold its arguments
            return submitted
        if outputs <= 0 or spec.actor_id or spec.max_retries == 0:
            return submitted
        size = len(spec.args or b"") + SPEC_OVERHEAD
        if size > self.max_bytes or self.limit <= 0:
            self.evicted += 1
            return submitted
        self._records[spec.task_id] = _Record(spec, submitted, outputs, size)
        self.bytes += size
        released: list[bytes] = []
        while len(self._records) > self.limit or self.bytes > self.max_bytes:
            oldest = self._records.pop(next(iter(self._records)))
            self.bytes -= oldest.size
            self.evicted += 1
            released += oldest.submitted
        return released

    def output_freed(self, task_id: bytes) -> list[bytes]:
        """One of a task's outputs is unreferenced; what to release once none is left."""
        record = self._records.get(task_id)
        if record is None:
            return []
        record.outputs -= 1
        if record.outputs > 0:
            return []
        del self._records[task_id]
        self.bytes -= record.size
        return record.submitted

    def rerun(self, spec: TaskSpec, object_id: bytes) -> BaseException | list[bytes]:
        """An output of ``spec`` is lost: the objects to pin for its re-run, or why it cannot
        be rebuilt. The caller bumps ``spec.attempt``."""
        if spec.actor_id:
            return exceptions.ObjectReconstructionFailedError(object_id.hex())
        if spec.max_retries != -1 and spec.attempt >= spec.max_retries:
            return exceptions.ObjectReconstructionFailedMaxAttemptsExceededError(object_id.hex())
        record = self._records.get(spec.task_id)
        if record is None:
            return exceptions.ObjectReconstructionFailedLineageEvictedError(object_id.hex())
        return list(record.submitted)
