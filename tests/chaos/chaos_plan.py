"""The seeded killer's decisions, with no I/O: which fault comes next, and when.

A :class:`ChaosPlan` is fed what the cluster looks like (its worker nodes and their worker
processes) and answers one :class:`Fault` at a time, drawn from a ``random.Random(seed)``, so
a seed names one run's faults exactly. The head node (the GCS, the driver's raylet) is never
a victim; at least ``min_nodes`` worker nodes stay up, and at most ``max_nodes`` run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["ChaosPlan", "Fault"]


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: ``kind`` is "kill-worker" (``victim`` a pid), "kill-node" (``victim`` a node
    id; a new node is added in its place), "add-node", or "none" (nothing can be hit now);
    ``after`` seconds from the last."""

    kind: str
    victim: str | int | None
    after: float


class ChaosPlan:
    """The next fault for a cluster, by seed."""

    def __init__(self, seed: int, *, min_nodes: int = 2, max_nodes: int = 4,
                 mean_interval: float = 1.0) -> None:
        self.seed = seed
        self.min_nodes = min_nodes
        self.max_nodes = max_nodes
        self.mean_interval = mean_interval
        self._random = random.Random(seed)

    def next_fault(self, workers_by_node: dict[str, list[int]]) -> Fault:
        """The fault to make next, given each worker node's id and its worker processes'
        pids (sorted, so the same cluster and seed give the same victim)."""
        draw = self._random
        after = draw.uniform(0.5, 1.5) * self.mean_interval
        nodes = sorted(workers_by_node)
        pids = sorted(pid for node in nodes for pid in workers_by_node[node])
        kinds = ["kill-worker"] * 5 + ["kill-node"] * 3 + ["add-node"] * 2
        kind = draw.choice(kinds)
        if kind == "kill-worker" and not pids:
            kind = "kill-node"
        if kind == "kill-node" and len(nodes) <= self.min_nodes:
            kind = "add-node" if len(nodes) < self.max_nodes else "kill-worker"
        if kind == "add-node" and len(nodes) >= self.max_nodes:
            kind = "kill-node" if len(nodes) > self.min_nodes else "kill-worker"
        if kind == "kill-worker":
            if not pids:
                return Fault("add-node" if len(nodes) < self.max_nodes else "none", None,
                             after)
            return Fault(kind, draw.choice(pids), after)
        if kind == "kill-node":
            return Fault(kind, draw.choice(nodes), after)
        return Fault(kind, None, after)
