"""Where tasks and actors run: Ray's ``scheduling_strategy`` values, under Ray's module path.

``scheduling_strategy=`` takes ``None`` or ``"DEFAULT"`` (local node first, spilling over to
other nodes when it is busy or lacks a resource), ``"SPREAD"`` (across the nodes, round robin
over those with free resources) or a :class:`NodeAffinitySchedulingStrategy`. Each travels to
the raylet as a short list (:func:`strategy_to_wire`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy",
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
    """Ray's strategy for running in a placement group's bundle. Placement groups are not
    supported yet: the name exists so that code importing it loads, and using it as a
    ``scheduling_strategy`` raises ValueError."""

    def __init__(self, placement_group: Any, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks: bool | None = None) -> None:
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks


def strategy_to_wire(strategy: Any) -> list | None:
    """The strategy as the raylet reads it: None (DEFAULT), ``["SPREAD"]`` or
    ``["NODE_AFFINITY", node_id, soft]``; ValueError for anything else."""
    if strategy is None or strategy == "DEFAULT":
        return None
    if strategy == "SPREAD":
        return ["SPREAD"]
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return ["NODE_AFFINITY", bytes.fromhex(strategy.node_id), strategy.soft]
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        raise ValueError("placement groups are not supported yet: use 'DEFAULT', 'SPREAD' or "
                         "NodeAffinitySchedulingStrategy")
    raise ValueError(f"Invalid scheduling_strategy {strategy!r}: use None, 'DEFAULT', 'SPREAD' "
                     "or cellfleet.util.scheduling_strategies.NodeAffinitySchedulingStrategy")

