"""The cluster resource view: every live node's resources, free resources and queue.

Raylets register with their totals and report their free resources and load when these change
(``ReportResources``, at most every 50 ms, and in every heartbeat). The GCS broadcasts what
changed to every raylet on the ``resources`` channel (``changes``), and a raylet that registers
gets the whole view (``snapshot``); each raylet's :class:`~..raylet.cluster_scheduler.
ClusterScheduler` spills work back by it. One row per live node: the view is bounded by the
cluster's size. No I/O here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ResourceView"]


class ResourceView:
    """Rows ``{node_id, address, total, available, queued, alive}`` and what changed."""

    def __init__(self) -> None:
        self.rows: dict[bytes, dict[str, Any]] = {}
        self._changed: set[bytes] = set()
        self._gone: set[bytes] = set()

    def node_added(self, node_id: bytes, address: str, total: dict[str, float]) -> None:
        """A raylet registered (again): all of it is free until it reports otherwise."""
        self.rows[node_id] = {"node_id": node_id, "address": address, "total": dict(total),
                              "available": dict(total), "queued": 0, "alive": True}
        self._gone.discard(node_id)
        self._changed.add(node_id)

    def report(self, node_id: bytes, available: dict[str, float],
               load: dict[str, Any]) -> bool:
        """A node's figures; True when they changed (a broadcast is due)."""
        row = self.rows.get(node_id)
        if row is None:
            return False
        queued = int(load.get("queued", 0))
        if row["available"] == available and row["queued"] == queued:
            return False
        row["available"] = dict(available)
        row["queued"] = queued
        self._changed.add(node_id)
        return True

    def bundles_changed(self, node_id: bytes, resources: dict[str, float], sign: int) -> bool:
        """Placement group bundles were committed on a node (``sign`` 1) or given back (-1):
        its totals change by ``resources`` (``gcs.placement_groups``). True if it is in the
        view."""
        row = self.rows.get(node_id)
        if row is None:
            return False
        total = row["total"]
        for k, v in resources.items():
            value = total.get(k, 0.0) + sign * v
            if abs(value) < 1e-9:
                total.pop(k, None)
            else:
                total[k] = value
        self._changed.add(node_id)
        return True

    def node_removed(self, node_id: bytes) -> bool:
        """A node died; True if it was in the view."""
        if self.rows.pop(node_id, None) is None:
            return False
        self._changed.discard(node_id)
        self._gone.add(node_id)
        return True

    def pending(self) -> bool:
        return bool(self._changed or self._gone)

    def changes(self) -> list[dict[str, Any]]:
        """The rows changed since the last call, and ``{node_id, alive: False}`` for nodes
        gone since then."""
        out = [self.rows[node_id] for node_id in sorted(self._changed)]
        out += [{"node_id": node_id, "alive": False} for node_id in sorted(self._gone)]
        self._changed.clear()
        self._gone.clear()
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        return list(self.rows.values())
