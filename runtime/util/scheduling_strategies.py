"""Where tasks and actors run: Ray's ``scheduling_strategy`` values, under Ray's module path.

``scheduling_strategy=`` takes ``None`` or ``"DEFAULT"`` (local node first, spilling over to
other nodes when it is busy or lacks a resource), ``"SPREAD"`` (across the nodes, round robin
over those with free resources), a :class:`NodeAffinitySchedulingStrategy` or a
:class:`PlacementGroupSchedulingStrategy` (in a bundle of a placement group: its resources
are renamed to the bundle's, :func:`in_placement_group`). Each travels to the raylet as a
short list (:func:`strategy_to_wire`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy",
           "current_placement_group_hex", "in_placement_group", "strategy_from_options",
           "strategy_to_wire"]


class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (its hex id, as ``get_runtime_context().get_node_id()``).

    ``soft=False``: the task fails with ``TaskUnschedulableError`` when that node is dead,
    unknown, or lacks the resources. ``soft=True``: it runs elsewhere in those cases.
    """

    def __init__(self, node_id: str | bytes, soft: bool, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False) -> None:
        if isinstance(node_id, bytes):
            node_id = node_id.hex()
        if not isinstance(node_id, str):
            raise TypeError(f"node_id must be a node's hex id (str), got "
                            f"{type(node_id).__name__}")
        try:
            bytes.fromhex(node_id)
        except ValueError:
            raise ValueError(f"node_id {node_id!r} is not a node's hex id: take it from "
                             "cellfleet.nodes()[i]['NodeID'] or "
                             "get_runtime_context().get_node_id()") from None
        self.node_id = node_id
        self.soft = bool(soft)
        self._spill_on_unavailable = _spill_on_unavailable
        self._fail_on_unavailable = _fail_on_unavailable

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


class PlacementGroupSchedulingStrategy:
    """Run in a placement group's bundle: ``placement_group_bundle_index`` (-1: any bundle
    of the group). ``placement_group_capture_child_tasks``: tasks and actors this one
    creates without a strategy of their own go into the group too."""

    def __init__(self, placement_group: Any, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks: bool | None = None) -> None:
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def __repr__(self) -> str:
        return (f"PlacementGroupSchedulingStrategy({self.placement_group!r}, "
                f"placement_group_bundle_index={self.placement_group_bundle_index})")


def strategy_from_options(options: dict[str, Any]) -> list | None:
    """``strategy_to_wire`` of a task's or actor's options, with Ray's legacy
    ``placement_group=`` / ``placement_group_bundle_index=`` options too."""
    group = options.get("placement_group")
    if group is not None and group != "default":
        if options.get("scheduling_strategy") is not None:
            raise ValueError("Scheduling strategy and placement_group options cannot be set "
                             "at the same time: use scheduling_strategy="
                             "PlacementGroupSchedulingStrategy(...) alone")
        return strategy_to_wire(PlacementGroupSchedulingStrategy(
            group, options.get("placement_group_bundle_index", -1),
            options.get("placement_group_capture_child_tasks")))
    return strategy_to_wire(options.get("scheduling_strategy"))


def strategy_to_wire(strategy: Any) -> list | None:
    """The strategy as the raylet reads it: None (DEFAULT), ``["SPREAD"]``,
    ``["NODE_AFFINITY", node_id, soft]`` or ``["PLACEMENT_GROUP", pg_id, bundle_index,
    capture_child_tasks]``; ValueError for anything else."""
    if strategy is None or strategy == "DEFAULT":
        return None
    if strategy == "SPREAD":
        return ["SPREAD"]
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return ["NODE_AFFINITY", bytes.fromhex(strategy.node_id), strategy.soft]
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        return _placement_group_wire(strategy)
    raise ValueError(f"Invalid scheduling_strategy {strategy!r}: use None, 'DEFAULT', 'SPREAD', "
                     "cellfleet.util.scheduling_strategies.NodeAffinitySchedulingStrategy or "
                     "PlacementGroupSchedulingStrategy")


def _placement_group_wire(strategy: PlacementGroupSchedulingStrategy) -> list | None:
    group = strategy.placement_group
    index = strategy.placement_group_bundle_index
    binary = getattr(getattr(group, "id", None), "binary", None)
    if binary is None:
        raise ValueError(f"placement_group must be a PlacementGroup (from "
                         f"cellfleet.util.placement_group(...)), got {group!r}")
    if not isinstance(index, int) or isinstance(index, bool) or index < -1:
        raise ValueError(f"placement_group_bundle_index must be -1 (any bundle) or a bundle's "
                         f"index, got {index!r}")
    if group.is_empty:
        return None
    count = group.bundle_count
    if index >= count:
        raise ValueError(f"placement_group_bundle_index {index} is out of range: the group "
                         f"has {count} bundle(s) (indices 0 to {count - 1}, or -1 for any)")
    return ["PLACEMENT_GROUP", binary(), index, bool(strategy.placement_group_capture_child_tasks)]


# Work in a bundle asks for a little of the bundle's marker resource (which each bundle holds
# 1000 of), so that even work asking for nothing else runs where the bundle is. The amount
# also says whether the work's own children are captured into the group.
MARKER_AMOUNT = 0.001
CAPTURING_MARKER_AMOUNT = 0.002
_MARKER = "bundle_group_"


def in_placement_group(resources: dict[str, float], strategy: list | None,
                       current: dict[str, float] | None) -> tuple[dict[str, float], list | None]:
    """The resources a task or actor asks for, and its strategy: in a placement group its
    resources ``R`` are renamed to the bundle's (``R_group_<index>_<id>`` and
    ``R_group_<id>``, Ray's names). ``current``: the resources of the task (or actor) that
    submits it; with no strategy of its own it joins the group that task captures."""
    if strategy is None and current:
        captured = current_placement_group_hex(current, capturing=True)
        if captured is not None:
            strategy = ["PLACEMENT_GROUP", bytes.fromhex(captured), -1, True]
    if strategy is None or strategy[0] != "PLACEMENT_GROUP":
        return resources, strategy
    pg_hex, index = strategy[1].hex(), strategy[2]
    marker = CAPTURING_MARKER_AMOUNT if strategy[3] else MARKER_AMOUNT
    out: dict[str, float] = {}
    for name, amount in {**resources, "bundle": marker}.items():
        if amount > 0:
            out[f"{name}_group_{pg_hex}"] = amount
            if index >= 0:
                out[f"{name}_group_{index}_{pg_hex}"] = amount
    return out, strategy


def current_placement_group_hex(resources: dict[str, float],
                                capturing: bool = False) -> str | None:
    """The placement group (hex id) that work holding ``resources`` runs in, if any
    (``capturing``: only if it captures its children)."""
    for name, amount in resources.items():
        if name.startswith(_MARKER) and "_" not in name[len(_MARKER):]:
            if capturing and abs(amount - CAPTURING_MARKER_AMOUNT) > 1e-9:
                return None
            return name[len(_MARKER):]
    return None
