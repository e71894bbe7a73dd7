"""Bottom-up scheduling across nodes: run here, or spill back to another node, as a state class.

Every lease request reaches the submitter's own raylet first (the Ray paper's bottom-up
scheduler). This class decides, from the node's :class:`~.scheduler.LocalScheduler` and its
view of the other nodes (their totals, free resources and queues as the GCS last broadcast
them), where the request goes:

- ``DEFAULT``: to the node holding most of the request's large arguments (``locality``) when it
  has what the request asks for and its estimated wait is shorter than moving them (bytes ÷
  ``TRANSFER_BYTES_S``); else here when it can start here now; else to the node that can start
  it now (the shortest queue, then the most free CPU); else to the node with the lowest
  estimated wait among those that have what it asks for (queue ÷ CPUs, × the owner's mean task
  time; this node on a tie). A request queued here that waits for resources moves on when a
  broadcast or a tick shows a node that has them free.
- ``SPREAD``: round robin over the nodes that can start it now (all nodes that have what it
  asks for, when none can).
- ``NODE_AFFINITY``: that node. Hard: refused when the node is dead, unknown or lacks the
  resources. Soft: ``DEFAULT`` in those cases.

A request no node of the cluster could ever run is *infeasible*: the first answer says so (the
submitter warns its user and asks again, to wait), and the request waits here until a node
that fits joins.

A request another raylet spilled here runs here when it can start here now. When it cannot
(the sender's view of this node was stale: a node that just drained, or filled, shows its old
figures until its next report reaches the others), it is decided again here, where this
node's own figures are exact: on to a node that has it free in this node's view, once (its
reason then starts with ``spilled on from``); else it is queued here. A spilled request that
waits here for resources moves on, like a request made here, when a broadcast or a tick shows
a node that has them free, but only once it has waited ``SPILL_SETTLE_S`` here (long enough
for this node's report to reach the other views), so a request hops at most twice, then once
per ``SPILL_SETTLE_S``, however much the nodes' views disagree. SPREAD requests move on the
same way (round robin is over the nodes that can start them now; a stale view must not leave
one queued behind the owner's own leases here). Affinity and placement group requests stay
where they were sent, and so do requests whose large arguments are here (the sender weighed
the wait here against moving them).

After spilling a request to a node, the view counts its resources there as taken until the
next broadcast or clock tick (the node's figures may not change at all when its lease comes
and goes between two reports), so a burst of requests spreads over the free nodes rather
than piling on one.
No I/O: the raylet feeds events and carries out the actions (``Spill``, ``Infeasible`` and the
local scheduler's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .scheduler import LeaseRequest, LocalScheduler, Reject, invalid_request

__all__ = ["ClusterScheduler", "Infeasible", "NodeView", "Spill"]


@dataclass(slots=True)
class NodeView:
    """Another node as this raylet sees it (from the GCS's resource broadcasts)."""

    node_id: bytes
    address: str  # its raylet
    total: dict[str, float]
    reported: dict[str, float]  # free resources, as the node last reported them
    reported_queued: int = 0
    available: dict[str, float] = field(default_factory=dict)  # minus what was spilled there
    queued: int = 0

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> NodeView:
        view = cls(row["node_id"], row["address"], dict(row["total"]), dict(row["available"]),
                   int(row.get("queued", 0)))
        view.forget_spills()
        return view

    def forget_spills(self) -> None:
        self.available = dict(self.reported)
        self.queued = self.reported_queued


@dataclass(slots=True)
class Spill:
    """Answer the request: ask the raylet at ``address`` (node ``node_id``) instead."""

    request: LeaseRequest
    node_id: bytes
    address: str
    reason: str


@dataclass(slots=True)
class Infeasible:
    """Answer the request: no node of the cluster has what it asks for (yet)."""

    request: LeaseRequest
    reason: str


def node_name(node_id: bytes) -> str:
    """A node as placement reasons name it: the first 8 hex digits of its id."""
    return node_id.hex()[:8]


def _pinned(request: LeaseRequest) -> bool:
    """Whether the request's strategy names where it runs (affinity, placement group): it is
    not moved on to another node once it is there."""
    return bool(request.strategy) and request.strategy[0] != "SPREAD"


def _has(total: dict[str, float], resources: dict[str, float]) -> bool:
    return all(total.get(k, 0.0) >= v - 1e-9 for k, v in resources.items())


TRANSFER_BYTES_S = 1e9  # node-to-node object transfer, for weighing locality against waits
SPILL_SETTLE_S = 0.1  # a request spilled here waits this long before it may move on again
ONWARD = "spilled on from "  # how the reason of a request moved on from where it was spilled


def _wait(queued: int, total: dict[str, float]) -> float:
    """A node's wait for one more request, in mean task times: the requests before it (and
    the running task it waits for) over the node's CPUs."""
    return (queued + 1) / max(total.get("CPU", 0.0), 1.0)


def _lacking(have: dict[str, float], resources: dict[str, float]) -> str:
    names = [k for k, v in resources.items() if have.get(k, 0.0) < v - 1e-9]
    return ", ".join(names) or "nothing"


@dataclass
class ClusterScheduler:
    """Where this node's lease requests go: here (``local``) or to another node."""

    node_id: bytes
    local: LocalScheduler
    nodes: dict[bytes, NodeView] = field(default_factory=dict)  # the other live nodes
    parked: list[LeaseRequest] = field(default_factory=list)  # infeasible, waiting
    _spread_cursor: int = 0

    # -- events ---------------------------------------------------------------------------

    def request_lease(self, request: LeaseRequest) -> list:
        bad = invalid_request(request.resources)
        if bad:
            return [Reject(request, bad)]
        return self._place(request)

    def update_nodes(self, rows: list[dict[str, Any]], replace: bool = False) -> list:
        """The GCS broadcast other nodes' figures (rows with ``alive`` False have gone);
        ``replace``: the rows are the whole view (a registration's answer)."""
        if replace:
            self.nodes.clear()
        for row in rows:
            if row["node_id"] == self.node_id:
                continue
            if row.get("alive", True):
                self.nodes[row["node_id"]] = NodeView.from_row(row)
            else:
                self.nodes.pop(row["node_id"], None)
        return self._retry_parked() + self._rebalance()

    def tick(self) -> list:
        """Time passed: what was spilled to other nodes shows in their reports by now (a
        lease that came and went between two reports never shows: the node looks free
        again), so requests queued here may move on."""
        for node in self.nodes.values():
            node.forget_spills()
        return self._rebalance()

    def cancel_requests(self, owner: Any) -> tuple[list[LeaseRequest], list]:
        """Drop the requests of ``owner`` (it left), queued here or parked."""
        parked = [r for r in self.parked if r.owner is owner]
        if parked:
            self.parked = [r for r in self.parked if r.owner is not owner]
        cancelled, actions = self.local.cancel_requests(owner)
        return parked + cancelled, actions

    def withdraw_where(self, pick: Callable[[LeaseRequest], bool]
                       ) -> tuple[list[LeaseRequest], list]:
        """Take out the requests, parked or queued here, that ``pick`` selects (those of a
        placement group that was removed, those their owner cancelled); returns them (to
        answer) and what their absence lets through."""
        parked = [r for r in self.parked if pick(r)]
        if parked:
            self.parked = [r for r in self.parked if not pick(r)]
        queued = [r for r in self.local.queue if pick(r)]
        return parked + queued, self.local.withdraw(queued) if queued else []

    # -- decisions ------------------------------------------------------------------------

    def _place(self, request: LeaseRequest) -> list:
        resources = request.resources
        if request.spilled and not self.local.missing(resources):
            return self._spilled_here(request)
        strategy = request.strategy
        if strategy and strategy[0] == "NODE_AFFINITY":
            return self._affinity(request, strategy[1], bool(strategy[2]))
        if strategy and strategy[0] == "SPREAD":
            return self._spread(request)
        if strategy and strategy[0] == "PLACEMENT_GROUP":
            # Its resources are the bundles' (``raylet.bundles``): only nodes holding them
            # have them. Until the group is placed none does: it waits, without a warning.
            request.wait_infeasible = True
            index = f", bundle {strategy[2]}" if strategy[2] >= 0 else ""
            return self._default(request, f"PlacementGroup({strategy[1].hex()[:8]}{index}): ")
        return self._default(request, "")

    def _default(self, request: LeaseRequest, prefix: str) -> list:
        resources = request.resources
        here_has = not self.local.missing(resources)
        if request.locality:  # the node that holds the large arguments, unless busy
            holder, size = request.locality
            why = (f"{prefix}locality: {node_name(holder)} holds {size / 1e6:.0f} MB of the "
                   "arguments")
            move_s = size / TRANSFER_BYTES_S  # what running elsewhere costs first
            if holder == self.node_id:
                if here_has and (self.local.fits_now(resources) or _wait(
                        len(self.local.queue), self.local.total) * request.task_s <= move_s):
                    return self._here(request, why)
            else:
                node = self.nodes.get(holder)
                if node is not None and _has(node.total, resources) and (
                        _has(node.available, resources)
                        or _wait(node.queued, node.total) * request.task_s <= move_s):
                    return [self._spill(request, node, why)]
        if here_has and self.local.fits_now(resources):
            return self._here(request, prefix + "local")
        best = self._best_free(resources)
        if best is None:  # nobody can start it now: the shortest estimated wait
            able = [n for n in self.nodes.values() if _has(n.total, resources)]
            best = min(able, key=lambda n: (_wait(n.queued, n.total), n.node_id), default=None)
            if here_has and (best is None or _wait(len(self.local.queue), self.local.total)
                             <= _wait(best.queued, best.total)):
                return self._here(request, f"{prefix}local (queued: no node has it free; "
                                           f"{self._queue_text(request)})")
        if best is None:
            return self._infeasible(request)
        why = (self._busy(request) if here_has
               else f"it has no {_lacking(self.local.total, resources)}")
        return [self._spill(request, best, f"{prefix}spilled back from "
                                           f"{node_name(self.node_id)}: {why}")]

    def _spilled_here(self, request: LeaseRequest) -> list:
        """A request another raylet spilled here, which this node has what it asks for: here
        when it can start here now (or stays here, or was moved on already); else on to a
        node that has it free; else queued here."""
        request.arrived = self.local.clock()
        if (self._stays(request) or request.reason.startswith(ONWARD)
                or self.local.fits_now(request.resources)):
            return self._here(request, request.reason)
        best = self._best_free(request.resources)
        if best is None:
            return self._here(request, request.reason)
        return [self._spill(request, best, self._moved_reason(request))]

    def _rebalance(self) -> list:
        """Requests queued here for want of resources go to nodes that have them free now
        (DEFAULT and SPREAD ones: affinity and placement group requests stay where they were
        sent; a spilled one once it has waited ``SPILL_SETTLE_S`` here)."""
        moved = []
        if self.nodes:
            settled = self.local.clock() - SPILL_SETTLE_S
            for request in self.local.waiting_for_resources():
                if _pinned(request) or (request.spilled and (self._stays(request)
                                                             or request.arrived > settled)):
                    continue
                best = self._best_free(request.resources)
                if best is not None:
                    moved.append(self._spill(request, best, self._moved_reason(request)))
        return moved + self.local.withdraw([s.request for s in moved]) if moved else []

    def _stays(self, request: LeaseRequest) -> bool:
        """A request spilled here that does not move on: one pinned by its strategy, or whose
        large arguments are here."""
        return _pinned(request) or bool(request.locality
                                        and request.locality[0] == self.node_id)

    def _moved_reason(self, request: LeaseRequest) -> str:
        how = ONWARD if request.spilled else "spilled back from "
        return f"{how}{node_name(self.node_id)}: {self._busy(request)}"

    def _best_free(self, resources: dict[str, float]) -> NodeView | None:
        """The other node that can start ``resources`` now: the shortest queue, then the most
        free CPU."""
        free = [n for n in self.nodes.values() if _has(n.available, resources)]
        return min(free, key=lambda n: (n.queued, -n.available.get("CPU", 0.0), n.node_id),
                   default=None)

    def _busy(self, request: LeaseRequest) -> str:
        return (f"it had no free {_lacking(self.local.available, request.resources)} "
                f"({self._queue_text(request)})")

    def _queue_text(self, request: LeaseRequest) -> str:
        """This node's queue, and the wait it means when the owner knows its tasks' time."""
        queued = len(self.local.queue)
        if not request.task_s:
            return f"queue {queued}"
        wait = _wait(queued, self.local.total) * request.task_s
        return f"queue {queued}, est. wait {wait * 1000:.0f} ms"

    def _spread(self, request: LeaseRequest) -> list:
        resources = request.resources
        order = sorted([self.node_id, *self.nodes])
        able = [i for i, node_id in enumerate(order) if self._has_total(node_id, resources)]
        if not able:
            return self._infeasible(request)
        free = [i for i in able if self._fits_now(order[i], resources)] or able
        after = [i for i in free if i >= self._spread_cursor]
        pick = (after or free)[0]
        self._spread_cursor = pick + 1
        node_id = order[pick]
        if node_id == self.node_id:
            return self._here(request, "SPREAD")
        return [self._spill(request, self.nodes[node_id], "SPREAD")]

    def _affinity(self, request: LeaseRequest, target: bytes, soft: bool) -> list:
        label = f"NodeAffinity({'soft' if soft else 'hard'})"
        resources = request.resources
        if target == self.node_id or target in self.nodes:
            if self._has_total(target, resources):
                if target == self.node_id:
                    return self._here(request, label)
                return [self._spill(request, self.nodes[target], label)]
            problem = f"node {node_name(target)} has no {self._lacking_total(target, resources)}"
        else:
            problem = f"node {node_name(target)} is dead or not part of this cluster"
        if soft:
            return self._default(request, f"{label}: {problem}; ")
        return [Reject(request, f"{label}: {problem}")]

    def _here(self, request: LeaseRequest, reason: str) -> list:
        request.reason = reason
        return self.local.request_lease(request)

    def _spill(self, request: LeaseRequest, node: NodeView, reason: str) -> Spill:
        if _has(node.available, request.resources):
            for k, v in request.resources.items():  # taken there until the next broadcast
                node.available[k] = node.available.get(k, 0.0) - v
        else:
            node.queued += 1
        return Spill(request, node.node_id, node.address, reason)

    def _infeasible(self, request: LeaseRequest) -> list:
        if request.wait_infeasible:
            self.parked.append(request)
            return []
        return [Infeasible(request, self.infeasible_reason(request.resources))]

    def infeasible_reason(self, resources: dict[str, float]) -> str:
        """The warning for a request no node has what it needs for."""
        shapes = [self.local.total, *(n.total for n in self.nodes.values())]
        lacking = _lacking(self._union(shapes), resources)
        detail = (f"no node has enough {lacking}" if lacking != "nothing"
                  else "no single node has all of them")
        return (f"no node of the cluster ({len(shapes)} node(s)) has the resources "
                f"{resources} ({detail}); it waits until a node that has them joins")

    def _retry_parked(self) -> list:
        parked, self.parked = self.parked, []
        actions: list = []
        for request in parked:
            actions += self._place(request)  # parks it again while still infeasible
        return actions

    # -- the view -------------------------------------------------------------------------

    def _has_total(self, node_id: bytes, resources: dict[str, float]) -> bool:
        if node_id == self.node_id:
            return not self.local.missing(resources)
        return _has(self.nodes[node_id].total, resources)

    def _lacking_total(self, node_id: bytes, resources: dict[str, float]) -> str:
        total = self.local.total if node_id == self.node_id else self.nodes[node_id].total
        return _lacking(total, resources)

    def _fits_now(self, node_id: bytes, resources: dict[str, float]) -> bool:
        if node_id == self.node_id:
            return self.local.fits_now(resources)
        return _has(self.nodes[node_id].available, resources)

    @staticmethod
    def _union(shapes: list[dict[str, float]]) -> dict[str, float]:
        """Per resource, the most any one node has (what "fits some node" compares with)."""
        best: dict[str, float] = {}
        for shape in shapes:
            for k, v in shape.items():
                best[k] = max(best.get(k, 0.0), v)
        return best
