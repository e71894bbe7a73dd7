"""Placement groups, under Ray's module path: bundles of resources reserved together.

``placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")`` asks the GCS to
reserve the bundles (``gcs.placement_groups``: all or nothing, two phases on the nodes'
raylets); it returns at once with a :class:`PlacementGroup`, whose ``ready()`` is an
ObjectRef that resolves once the bundles are reserved and ``wait(timeout_seconds)`` says
whether they are. Tasks and actors run in a bundle with
``scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)``
(or Ray's legacy ``.options(placement_group=pg)``) and use that bundle's reserved resources.
``remove_placement_group(pg)`` gives them back and kills the work using them.
"""

from __future__ import annotations

import functools
from typing import Any

from .. import _messages as m
from .._ids import random_id
from ..gcs.placement_groups import check_bundles
from .scheduling_strategies import PlacementGroupSchedulingStrategy, current_placement_group_hex

__all__ = ["PlacementGroup", "PlacementGroupID", "get_current_placement_group",
           "get_placement_group", "placement_group", "placement_group_table",
           "remove_placement_group"]


def _core() -> Any:
    from ..api import _core as core

    return core()


class PlacementGroupID:
    """A placement group's id (``hex()``, ``binary()``), as Ray's."""

    __slots__ = ("_id",)

    def __init__(self, id: bytes) -> None:
        self._id = id

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def is_nil(self) -> bool:
        return not self._id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroupID) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"PlacementGroupID({self.hex()})"


class PlacementGroup:
    """A handle to a placement group; it pickles, so tasks may be given it."""

    def __init__(self, id: PlacementGroupID, bundle_cache: list[dict] | None = None) -> None:
        self.id = id
        self._bundles = bundle_cache

    @staticmethod
    def empty() -> PlacementGroup:
        return PlacementGroup(PlacementGroupID(b""))

    @property
    def is_empty(self) -> bool:
        return self.id.is_nil()

    @property
    def bundle_specs(self) -> list[dict]:
        """The bundles, as they were asked for."""
        if self._bundles is None:
            record = _core().request("gcs", m.GetPlacementGroup(self.id.binary()))
            if record is None:
                raise ValueError(f"placement group {self.id.hex()} is not known to the "
                                 "cluster (removed long ago, or from another cluster)")
            self._bundles = [record["bundles"][i] for i in sorted(record["bundles"])]
        return [dict(b) for b in self._bundles]

    @property
    def bundle_count(self) -> int:
        return 0 if self.is_empty else len(self.bundle_specs)

    def ready(self) -> Any:
        """An ObjectRef that resolves (to this group) once its bundles are reserved: a task
        that asks for nothing but a place in the group, as in Ray."""
        return _ready_check().options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            self, placement_group_capture_child_tasks=False)).remote(self)

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Wait up to ``timeout_seconds`` for the bundles to be reserved; True if they are."""
        record = _core().request("gcs", m.WaitPlacementGroup(self.id.binary(),
                                                             float(timeout_seconds)),
                                 timeout=max(float(timeout_seconds), 0.0) + 30)
        return record is not None and record["state"] == "CREATED"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __reduce__(self):
        return PlacementGroup, (self.id, self._bundles)

    def __repr__(self) -> str:
        return f"PlacementGroup({self.id.hex()})"


def _ready(group: PlacementGroup) -> PlacementGroup:
    return group


@functools.cache
def _ready_check() -> Any:
    from ..remote_function import RemoteFunction

    return RemoteFunction(_ready, {"num_cpus": 0, "max_retries": 0,
                                   "name": "bundle_reservation_check"})


def placement_group(bundles: list[dict[str, float]], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None, _max_cpu_fraction_per_node: float = 1.0,
                    _soft_target_node_id: str | None = None) -> PlacementGroup:
    """Reserve ``bundles`` (resource dicts) on the cluster's nodes by ``strategy``: PACK,
    SPREAD, STRICT_PACK or STRICT_SPREAD. Returns at once; ``ready()`` / ``wait()`` tell
    when the reservation is made. ``lifetime="detached"``: the group outlives its job."""
    if lifetime not in (None, "detached"):
        raise ValueError(f"placement_group lifetime must be None or 'detached', got "
                         f"{lifetime!r}")
    if not isinstance(name, str):
        raise TypeError(f"placement_group name must be a str, got {type(name).__name__}")
    check_bundles(bundles, strategy)
    bundles = [{k: float(v) for k, v in b.items() if v > 0} for b in bundles]
    core = _core()
    pg_id = random_id()
    create = m.CreatePlacementGroup(pg_id, bundles, strategy, name, core.namespace,
                                    lifetime == "detached", core.current_job_id)
    if name:  # a taken name is an error here, as in Ray
        core.request("gcs", create)
    else:  # nothing else can fail that was not checked here: no round trip (what the GCS
        _send(core, create)  # might still refuse, wait() and ready() raise)
    return PlacementGroup(PlacementGroupID(pg_id), bundles)


def _send(core: Any, message: m.Message) -> None:
    """Send to the GCS without waiting; later requests of this process come after it."""
    core.call_soon(lambda: core.gcs.send(message))


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Give the group's resources back; tasks and actors using them are killed."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group takes a PlacementGroup, got "
                        f"{placement_group!r}")
    _send(_core(), m.RemovePlacementGroup(placement_group.id.binary()))


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live placement group called ``placement_group_name`` in this job's namespace."""
    core = _core()
    record = core.request("gcs", m.GetPlacementGroup(b"", placement_group_name,
                                                     core.namespace))
    if record is None:
        raise ValueError(f"Failed to look up placement group with name: "
                         f"{placement_group_name} (none by that name is alive in namespace "
                         f"{core.namespace!r})")
    return _from_record(record)


def get_current_placement_group() -> PlacementGroup | None:
    """The placement group the current task or actor runs in (None in the driver, or
    outside any group)."""
    pg_hex = current_placement_group_id()
    return None if pg_hex is None else PlacementGroup(PlacementGroupID(bytes.fromhex(pg_hex)))


def current_placement_group_id() -> str | None:
    """The hex id of the group the current task or actor runs in, if any."""
    from .. import _context

    core = _context.core
    if core is None:
        return None
    spec = core.current_task
    resources = spec.resources if spec is not None and spec.resources else (
        core.actor_resources or {})
    return current_placement_group_hex(resources)


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict[str, Any]:
    """One group's record (Ray's keys: ``placement_group_id``, ``name``, ``bundles``,
    ``bundles_to_node_id``, ``strategy``, ``state``, ``stats``), or every known group's by
    hex id."""
    core = _core()
    if placement_group is not None:
        record = core.request("gcs", m.GetPlacementGroup(placement_group.id.binary()))
        return record if record is not None else {}
    return {r["placement_group_id"]: r for r in core.request("gcs", m.ListPlacementGroups())}


def _from_record(record: dict[str, Any]) -> PlacementGroup:
    bundles = [record["bundles"][i] for i in sorted(record["bundles"])]
    return PlacementGroup(PlacementGroupID(bytes.fromhex(record["placement_group_id"])),
                          bundles)
