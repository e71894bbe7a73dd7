"""A node's share of placement groups: bundles prepared and committed here, as a state class.

The GCS reserves a placement group's bundles in two phases (``gcs.placement_groups``). A
*prepare* takes a bundle's resources from the node's free resources (all the bundles of the
message or none); a *commit* makes them usable: the bundle's resources ``R`` appear in the
node's totals as ``R_group_<index>_<id>`` and ``R_group_<id>`` (Ray's names), which only work
scheduled into that bundle asks for, so the reservation stays exact. A *return* gives it all
back, for one attempt or the whole group: leases that use the group's resources end here
(their workers are to be killed) and requests queued for them are refused. Every step is
idempotent and an unknown bundle is ignored, so late or repeated messages do no harm. No I/O:
the raylet carries out what comes back.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..gcs.placement_groups import bundle_resource_names as renamed
from .scheduler import LocalScheduler, Reject

__all__ = ["BundleLedger"]

EPS = 1e-9
MAX_REMOVED = 10_000  # removed groups remembered, to refuse work sent to them


@dataclass(slots=True)
class _Bundle:
    attempt: int
    resources: dict[str, float]
    committed: bool = False


class BundleLedger:
    """The bundles this node holds, by (placement group id, bundle index)."""

    def __init__(self, scheduler: LocalScheduler) -> None:
        self.scheduler = scheduler
        self.bundles: dict[tuple[bytes, int], _Bundle] = {}
        self._removed: OrderedDict[bytes, None] = OrderedDict()

    def group_removed(self, pg_id: bytes) -> None:
        """The GCS removed the group: work asking for it from now on is refused."""
        self._removed[pg_id] = None
        if len(self._removed) > MAX_REMOVED:
            self._removed.popitem(last=False)

    def was_removed(self, pg_id: bytes) -> bool:
        return pg_id in self._removed

    def prepare(self, pg_id: bytes, attempt: int, bundles: list) -> bool:
        """Take the resources of ``bundles`` (``[[index, resources], ...]``) if all are free."""
        fresh = [(index, res) for index, res in bundles
                 if self.bundles.get((pg_id, index), _Bundle(-1, {})).attempt != attempt]
        if any((pg_id, index) in self.bundles for index, _ in fresh):
            return False  # held for another attempt: that one must be returned first
        need: dict[str, float] = {}
        for _, res in fresh:
            for k, v in res.items():
                need[k] = need.get(k, 0.0) + v
        available = self.scheduler.available
        if any(available.get(k, 0.0) < v - EPS for k, v in need.items()):
            return False
        for index, res in fresh:
            self.bundles[(pg_id, index)] = _Bundle(attempt, dict(res))
        self._add(available, need, -1)
        return True

    def commit(self, pg_id: bytes, attempt: int, indices: list[int]) -> tuple[bool, list]:
        """Make prepared bundles usable; False when one was not prepared for this attempt."""
        held = [self.bundles.get((pg_id, index)) for index in indices]
        if any(b is None or b.attempt != attempt for b in held):
            return False, []
        pg_hex = pg_id.hex()
        for index, bundle in zip(indices, held):
            if not bundle.committed:
                bundle.committed = True
                names = renamed(pg_hex, index, bundle.resources)
                self._add(self.scheduler.total, names, 1)
                self._add(self.scheduler.available, names, 1)
        return True, self.scheduler.schedule()

    def give_back(self, pg_id: bytes, attempt: int) -> tuple[list[bytes], list]:
        """Return what the group holds here (``attempt`` -1: all of it). Returns the workers
        to kill (their leases used it) and the actions (refusals, grants it lets through)."""
        keys = [key for key, b in self.bundles.items()
                if key[0] == pg_id and (attempt == -1 or b.attempt == attempt)]
        if not keys:
            return [], []
        scheduler = self.scheduler
        pg_hex = pg_id.hex()
        workers: list[bytes] = []
        if any(self.bundles[key].committed for key in keys):
            for lease in list(scheduler.leases.values()):
                if any(k.endswith(pg_hex) for k in lease.resources):
                    workers.append(lease.worker_id)
                    scheduler._pop_lease(lease.lease_id)
        for key in keys:
            bundle = self.bundles.pop(key)
            if bundle.committed:
                names = renamed(pg_hex, key[1], bundle.resources)
                self._add(scheduler.total, names, -1, drop_empty=True)
                self._add(scheduler.available, names, -1, drop_empty=True)
            self._add(scheduler.available, bundle.resources, 1)
        actions: list[Any] = []
        gone = [r for r in scheduler.queue if any(k.endswith(pg_hex) for k in r.resources)
                and scheduler.missing(r.resources)]
        if gone:
            actions += [Reject(r, f"its placement group {pg_hex} was removed") for r in gone]
            actions += scheduler.withdraw(gone)
        else:
            actions += scheduler.schedule()
        return workers, actions

    def held(self) -> list[list]:
        """``[[pg_id, index, committed], ...]`` for the node's stats."""
        return [[pg_id, index, b.committed] for (pg_id, index), b in self.bundles.items()]

    @staticmethod
    def _add(into: dict[str, float], amounts: dict[str, float], sign: int,
             drop_empty: bool = False) -> None:
        for k, v in amounts.items():
            value = into.get(k, 0.0) + sign * v
            if drop_empty and abs(value) < EPS:
                into.pop(k, None)
            else:
                into[k] = value
