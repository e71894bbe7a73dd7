"""The GCS's placement groups as a plain state class: placing bundles, two-phase reservation.

A placement group is a list of *bundles* (resource dicts) reserved together on the cluster's
nodes by a strategy (Ray's): ``PACK`` (as few nodes as possible), ``SPREAD`` (as many as
possible), ``STRICT_PACK`` (one node) or ``STRICT_SPREAD`` (one node per bundle). A group goes
``PENDING -> CREATED -> REMOVED``; when a node holding some of its bundles dies it is
``RESCHEDULING`` until those bundles are placed again (the others stay where they are).

Reservation is all-or-nothing, in two phases per attempt (Ray's ``PrepareBundleResources`` /
``CommitBundleResources``): the manager picks a node per bundle from its estimate of the
nodes' free resources, asks each node's raylet to *prepare* its bundles (take the resources
if free, or refuse), and once every node has prepared, to *commit* them (the bundles'
resources appear on the node as ``CPU_group_<i>_<id>`` ...). An attempt on a single node
prepares and commits in one message: with one participant, one phase is all-or-nothing.
A refusal, a node that dies or an attempt that takes longer than ``ATTEMPT_TIMEOUT_S`` (a
lost message) aborts the attempt: every node of the attempt is told to return what it took
for it (``ReturnBundles``, sent on the same connection after the prepare, so it lands after
it), and the group waits for the next change of the cluster's resources to try again.
Answers of an aborted attempt are ignored (each carries its attempt number). A group that
fits no node stays ``PENDING`` and is placed when a node that fits joins.

The free resources come from the nodes' reports (on every change, and every heartbeat);
between two reports the manager counts what it took and what removed groups gave back
(``_Node.delta``), so a group removed and another created at once do not wait for a report.
An aborted attempt's resources are not counted back: what it took may not show in the last
report, so only the next one tells. A wrong estimate costs a refused prepare and a retry at
the next report.

Live groups are bounded (``max_groups``; creating more fails with a clear error) and removed
ones are remembered up to ``max_removed``. No I/O: the server carries out the actions.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._graveyard import Graveyard

__all__ = ["ATTEMPT_TIMEOUT_S", "STRATEGIES", "BundlesChanged", "Commit", "GroupSettled",
           "PlacementGroupManager", "Prepare", "ReturnBundles", "bundle_resource_names"]

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
ATTEMPT_TIMEOUT_S = 10.0
BUNDLE_MARKER = "bundle"  # every bundle also holds 1000 of bundle_group_<i>_<id>, as in Ray
BUNDLE_MARKER_AMOUNT = 1000.0
EPS = 1e-9


@dataclass(slots=True)
class Prepare:
    """Ask node ``node_id``'s raylet to take ``bundles`` (``[[index, resources], ...]``);
    ``commit``: and commit them at once (the attempt's only node: one phase is enough)."""

    node_id: bytes
    pg_id: bytes
    attempt: int
    bundles: list
    commit: bool = False


@dataclass(slots=True)
class Commit:
    """Ask node ``node_id``'s raylet to make its prepared bundles of the attempt usable."""

    node_id: bytes
    pg_id: bytes
    attempt: int
    indices: list


@dataclass(slots=True)
class ReturnBundles:
    """Tell node ``node_id``'s raylet to give back what it holds of the group (for one
    attempt, or all of it when ``attempt`` is -1); work using it there is killed."""

    node_id: bytes
    pg_id: bytes
    attempt: int


@dataclass(slots=True)
class BundlesChanged:
    """Bundles were committed on node ``node_id`` (``sign`` 1) or given back (-1): its
    totals in the resource view change by ``resources`` (``bundle_resource_names``)."""

    node_id: bytes
    resources: dict[str, float]
    sign: int


@dataclass(slots=True)
class GroupSettled:
    """The group is CREATED or REMOVED: wake those who wait for it."""

    record: dict[str, Any]


def bundle_resource_names(pg_hex: str, index: int, resources: dict[str, float]
                          ) -> dict[str, float]:
    """What a committed bundle adds to its node: per resource ``R`` of the bundle,
    ``R_group_<index>_<id>`` and ``R_group_<id>`` (the wildcard, summed over the node's
    bundles), and the marker ``bundle_group_...`` that work of any size in it asks for."""
    out: dict[str, float] = {}
    for name, amount in {**resources, BUNDLE_MARKER: BUNDLE_MARKER_AMOUNT}.items():
        if amount <= 0:
            continue
        out[f"{name}_group_{index}_{pg_hex}"] = amount
        out[f"{name}_group_{pg_hex}"] = amount
    return out


@dataclass(slots=True)
class _Node:
    total: dict[str, float]
    available: dict[str, float]
    delta: dict[str, float] = field(default_factory=dict)  # ours since the last report

    def free(self) -> dict[str, float]:
        out = dict(self.available)
        for k, v in self.delta.items():
            out[k] = out.get(k, 0.0) + v
        return out

    def change(self, resources: dict[str, float], sign: float) -> None:
        for k, v in resources.items():
            self.delta[k] = self.delta.get(k, 0.0) + sign * v


@dataclass(slots=True, eq=False)
class _Group:
    pg_id: bytes
    bundles: list[dict[str, float]]
    strategy: str
    name: str
    namespace: str
    detached: bool
    job_id: int
    created_at: float
    state: str = "PENDING"
    nodes: list[bytes | None] = field(default_factory=list)  # committed placement per bundle
    attempt: int = 0
    trying: dict[int, bytes] = field(default_factory=dict)  # index -> node, this attempt
    prepared: set[bytes] = field(default_factory=set)  # nodes that prepared this attempt
    committed: set[bytes] = field(default_factory=set)  # nodes that committed this attempt
    started: float = 0.0
    why_pending: str = ""

    def record(self) -> dict[str, Any]:
        """The group as ``placement_group_table`` shows it (Ray's keys)."""
        return {
            "placement_group_id": self.pg_id.hex(), "name": self.name,
            "namespace": self.namespace, "strategy": self.strategy, "state": self.state,
            "bundles": {i: dict(b) for i, b in enumerate(self.bundles)},
            "bundles_to_node_id": {i: n.hex() for i, n in enumerate(self.nodes)
                                   if n is not None},
            "is_detached": self.detached, "job_id": self.job_id,
            "stats": {"scheduling_attempt": self.attempt, "created_at": self.created_at,
                      "pending_reason": self.why_pending if self.state != "CREATED" else ""},
        }


class PlacementGroupManager:
    """Placement groups by id, their names, and each node's estimated free resources."""

    def __init__(self, max_groups: int = 100_000, max_removed: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.groups: dict[bytes, _Group] = {}
        self.max_groups = max_groups
        self.removed = Graveyard(max_removed)
        self._names: dict[tuple[str, str], bytes] = {}
        self._refused: OrderedDict[bytes, str] = OrderedDict()  # pg id -> why, bounded
        self._bundle_totals: dict[bytes, dict[str, float]] = {}  # node -> committed bundles'
        self._nodes: dict[bytes, _Node] = {}
        self._waiting: dict[bytes, None] = {}  # groups to place, oldest first
        self._clock = clock

    # -- queries --------------------------------------------------------------------------

    def get(self, pg_id: bytes) -> dict[str, Any] | None:
        group = self.groups.get(pg_id)
        return None if group is None else group.record()

    def named(self, name: str, namespace: str) -> dict[str, Any] | None:
        pg_id = self._names.get((namespace, name))
        return None if pg_id is None else self.groups[pg_id].record()

    def table(self) -> list[dict[str, Any]]:
        return [group.record() for group in self.groups.values()]

    def node_bundle_resources(self, node_id: bytes) -> dict[str, float]:
        """The resources the committed bundles on ``node_id`` add to its totals."""
        return dict(self._bundle_totals.get(node_id, {}))

    def _moved(self, group: _Group, placed: dict[int, bytes], sign: int) -> list:
        """Bundles ``placed`` (index -> node) committed (``sign`` 1) or given back (-1)."""
        by_node: dict[bytes, dict[str, float]] = {}
        pg_hex = group.pg_id.hex()
        for index, node_id in placed.items():
            names = by_node.setdefault(node_id, {})
            for k, v in bundle_resource_names(pg_hex, index, group.bundles[index]).items():
                names[k] = names.get(k, 0.0) + v
        for node_id, names in by_node.items():
            totals = self._bundle_totals.setdefault(node_id, {})
            for k, v in names.items():
                value = totals.get(k, 0.0) + sign * v
                if abs(value) < EPS:
                    totals.pop(k, None)
                else:
                    totals[k] = value
            if not totals:
                del self._bundle_totals[node_id]
        return [BundlesChanged(n, names, sign) for n, names in sorted(by_node.items())]

    def stats(self) -> dict[str, int]:
        live = sum(g.state != "REMOVED" for g in self.groups.values())
        return {"live": live, "removed": len(self.removed),
                "removed_forgotten": self.removed.forgotten, "waiting": len(self._waiting)}

    # -- events from clients --------------------------------------------------------------

    def definition(self, pg_id: bytes) -> dict[str, Any] | None:
        """What storage keeps of a live group to recover it (``loaded``); its placement is
        not kept: a GCS that goes takes the reservations with it (raylets give them back)."""
        group = self.groups.get(pg_id)
        if group is None or group.state == "REMOVED":
            return None
        return {"bundles": group.bundles, "strategy": group.strategy, "name": group.name,
                "namespace": group.namespace, "detached": group.detached,
                "job_id": group.job_id, "created_at": group.created_at}

    def loaded(self, pg_id: bytes, definition: dict[str, Any]) -> list:
        """A group a restarted GCS reloaded from storage: PENDING, its name taken again, and
        placed as nodes register."""
        if pg_id in self.groups:
            return []
        bundles = [dict(b) for b in definition["bundles"]]
        group = _Group(pg_id, bundles, definition["strategy"], definition["name"],
                       definition["namespace"], definition["detached"], definition["job_id"],
                       definition["created_at"], nodes=[None] * len(bundles))
        self.groups[pg_id] = group
        if group.name:
            self._names[(group.namespace, group.name)] = pg_id
        self._waiting[pg_id] = None
        return self._try(group)

    def refusal(self, pg_id: bytes) -> str | None:
        """Why the creation of ``pg_id`` was refused, if it was (creation may be one-way)."""
        return self._refused.get(pg_id)

    def create(self, pg_id: bytes, bundles: list[dict[str, float]], strategy: str,
               name: str = "", namespace: str = "", detached: bool = False,
               job_id: int = 0) -> list:
        """A new group; ValueError (what to do) for bad input, a taken name or too many
        (remembered: ``refusal``)."""
        try:
            self._check_new(pg_id, bundles, strategy, name, namespace)
        except ValueError as exc:
            self._refused[pg_id] = str(exc)
            if len(self._refused) > self.removed.limit:
                self._refused.popitem(last=False)
            raise
        group = _Group(pg_id, [dict(b) for b in bundles], strategy, name, namespace,
                       detached, job_id, time.time(), nodes=[None] * len(bundles))
        self.groups[pg_id] = group
        if name:
            self._names[(namespace, name)] = pg_id
        self._waiting[pg_id] = None
        return self._try(group)

    def _check_new(self, pg_id: bytes, bundles: list[dict[str, float]], strategy: str,
                   name: str, namespace: str) -> None:
        check_bundles(bundles, strategy)
        if pg_id in self.groups:
            raise ValueError(f"placement group {pg_id.hex()} exists already")
        if name and (namespace, name) in self._names:
            raise ValueError(f"a placement group named {name!r} exists already in namespace "
                             f"{namespace!r}: remove it first or choose another name")
        live = len(self.groups) - len(self.removed)
        if live >= self.max_groups:
            raise ValueError(f"the cluster already has {live} placement groups (the limit): "
                             "remove some with remove_placement_group()")

    def remove(self, pg_id: bytes) -> list:
        """Remove a group: its nodes give its resources back and kill the work using them."""
        group = self.groups.get(pg_id)
        if group is None or group.state == "REMOVED":
            return []
        holding = {n for n in group.nodes if n is not None} | set(group.trying.values())
        actions: list = [ReturnBundles(node_id, pg_id, -1) for node_id in sorted(holding)]
        actions += self._moved(group, {i: n for i, n in enumerate(group.nodes)
                                       if n is not None}, -1)
        self._release(group, group.nodes, group.bundles)
        group.state = "REMOVED"
        group.nodes = [None] * len(group.bundles)
        group.trying.clear()
        self._waiting.pop(pg_id, None)
        if group.name:
            self._names.pop((group.namespace, group.name), None)
        actions.append(GroupSettled(group.record()))
        for old in self.removed.bury(pg_id):
            del self.groups[old]
        return actions + self.retry()

    def job_finished(self, job_id: int) -> list:
        """A job ended: its groups that are not detached go with it (Ray's lifetime)."""
        actions: list = []
        for group in list(self.groups.values()):
            if group.job_id == job_id and not group.detached and group.state != "REMOVED":
                actions += self.remove(group.pg_id)
        return actions

    # -- events from nodes ----------------------------------------------------------------

    def node_added(self, node_id: bytes, total: dict[str, float]) -> list:
        """A node registered. A raylet registers again only after losing its connection,
        and then gives back every bundle it held: what was placed there is placed again."""
        actions = self.node_removed(node_id) if node_id in self._nodes else []
        self._nodes[node_id] = _Node(dict(total), dict(total))
        return actions + self.retry()

    def node_report(self, node_id: bytes, available: dict[str, float]) -> list:
        """A node reported its free resources: they include everything done before."""
        node = self._nodes.get(node_id)
        if node is None:
            return []
        node.available = dict(available)
        node.delta.clear()
        return self.retry() if self._waiting else []

    def node_removed(self, node_id: bytes) -> list:
        """A node died: attempts using it abort; created groups with bundles there are
        rescheduled (their other bundles stay)."""
        if self._nodes.pop(node_id, None) is None:
            return []
        self._bundle_totals.pop(node_id, None)
        actions: list = []
        for group in self.groups.values():
            if group.state == "REMOVED":
                continue
            if node_id in group.trying.values():
                actions += self._abort(group, f"node {node_id.hex()[:8]} died during the "
                                              "reservation")
            if node_id in group.nodes:
                group.nodes = [None if n == node_id else n for n in group.nodes]
                group.state = "RESCHEDULING"
                group.why_pending = f"node {node_id.hex()[:8]} holding bundles died"
                self._waiting[group.pg_id] = None
        return actions + self.retry()

    def prepared(self, pg_id: bytes, attempt: int, node_id: bytes, ok: bool) -> list:
        """A node answered a prepare."""
        group = self._current(pg_id, attempt)
        if group is None or node_id not in group.trying.values():
            return []
        if not ok:
            return self._abort(group, f"node {node_id.hex()[:8]} no longer had the "
                                      "resources free")
        group.prepared.add(node_id)
        nodes = set(group.trying.values())
        if len(nodes) == 1:  # prepared and committed in one step
            return self.committed(pg_id, attempt, node_id, True)
        if group.prepared != nodes:
            return []
        return [Commit(n, pg_id, attempt, sorted(i for i, m in group.trying.items() if m == n))
                for n in sorted(nodes)]

    def committed(self, pg_id: bytes, attempt: int, node_id: bytes, ok: bool) -> list:
        """A node answered a commit."""
        group = self._current(pg_id, attempt)
        if group is None or node_id not in group.prepared:
            return []
        if not ok:
            return self._abort(group, f"node {node_id.hex()[:8]} had lost the prepared "
                                      "bundles")
        group.committed.add(node_id)
        if group.committed != set(group.trying.values()):
            return []
        for index, node in group.trying.items():
            group.nodes[index] = node
        actions = self._moved(group, group.trying, 1)
        group.trying.clear()
        group.state = "CREATED"
        group.why_pending = ""
        self._waiting.pop(pg_id, None)
        return actions + [GroupSettled(group.record())]

    def tick(self) -> list:
        """Time passed: attempts whose answers are overdue (lost) abort and try again."""
        now = self._clock()
        actions: list = []
        for pg_id in list(self._waiting):  # every group with an attempt under way waits
            group = self.groups[pg_id]
            if group.trying and now - group.started > ATTEMPT_TIMEOUT_S:
                actions += self._abort(group, "a node did not answer the reservation in time")
        return actions + (self.retry() if self._waiting else [])

    # -- decisions ------------------------------------------------------------------------

    def retry(self) -> list:
        """Try to place the groups that wait, oldest first."""
        actions: list = []
        for pg_id in list(self._waiting):
            group = self.groups[pg_id]
            if not group.trying:
                actions += self._try(group)
        return actions

    def _current(self, pg_id: bytes, attempt: int) -> _Group | None:
        group = self.groups.get(pg_id)
        if group is None or group.state == "REMOVED" or group.attempt != attempt:
            return None
        return group

    def _try(self, group: _Group) -> list:
        todo = [i for i, n in enumerate(group.nodes) if n is None]
        fixed = {i: n for i, n in enumerate(group.nodes) if n is not None}
        free = {node_id: node.free() for node_id, node in self._nodes.items()}
        placement = place_bundles(group.bundles, group.strategy, todo, fixed, free)
        if placement is None:
            totals = {node_id: dict(node.total) for node_id, node in self._nodes.items()}
            feasible = place_bundles(group.bundles, group.strategy, todo, fixed, totals)
            group.why_pending = ("waiting for resources to be free" if feasible is not None
                                 else f"infeasible: no {len(self._nodes)} node(s) of the "
                                      f"cluster can hold these bundles {group.strategy}; it "
                                      "waits until nodes that can join")
            return []
        group.attempt += 1
        group.trying = placement
        group.prepared.clear()
        group.committed.clear()
        group.started = self._clock()
        by_node: dict[bytes, list] = {}
        for index, node_id in sorted(placement.items()):
            by_node.setdefault(node_id, []).append([index, group.bundles[index]])
            self._nodes[node_id].change(group.bundles[index], -1)
        one_phase = len(by_node) == 1
        return [Prepare(n, group.pg_id, group.attempt, bundles, one_phase)
                for n, bundles in sorted(by_node.items())]

    def _abort(self, group: _Group, why: str) -> list:
        """Give back everything this attempt took; try again on the next change."""
        nodes = sorted(set(group.trying.values()))
        actions: list = [ReturnBundles(n, group.pg_id, group.attempt)
                         for n in nodes if n in self._nodes]
        group.trying.clear()
        group.prepared.clear()
        group.committed.clear()
        group.why_pending = why
        self._waiting[group.pg_id] = None
        return actions

    def _release(self, group: _Group, nodes: list[bytes | None],
                 bundles: list[dict[str, float]]) -> None:
        for node_id, bundle in zip(nodes, bundles):
            node = self._nodes.get(node_id) if node_id is not None else None
            if node is not None:
                node.change(bundle, +1)


def check_bundles(bundles: Any, strategy: Any) -> None:
    """ValueError (saying what to pass) for bundles or a strategy Ray would refuse."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Invalid placement group strategy {strategy!r}: use one of "
                         f"{', '.join(STRATEGIES)}")
    if not isinstance(bundles, list) or not bundles:
        raise ValueError("The placement group `bundles` argument must be a non-empty list of "
                         "dicts, e.g. [{'CPU': 1}, {'CPU': 1}]")
    for bundle in bundles:
        if not isinstance(bundle, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                and v >= 0 for k, v in bundle.items()):
            raise ValueError(f"Bundle {bundle!r} must be a dict of resource names to "
                             "non-negative numbers, e.g. {'CPU': 1}")
        if not any(v > 0 for v in bundle.values()):
            raise ValueError(f"Bundle {bundle!r} asks for nothing: every bundle needs a "
                             "resource with an amount above 0")


def _fits(free: dict[str, float], bundle: dict[str, float]) -> bool:
    return all(free.get(k, 0.0) >= v - EPS for k, v in bundle.items() if v > 0)


def _take(free: dict[str, float], bundle: dict[str, float]) -> None:
    for k, v in bundle.items():
        free[k] = free.get(k, 0.0) - v


def _all_fit(room: dict[str, float], bundles: list[dict[str, float]]) -> bool:
    for bundle in bundles:
        if not _fits(room, bundle):
            return False
        _take(room, bundle)
    return True


def place_bundles(bundles: list[dict[str, float]], strategy: str, todo: list[int],
                  fixed: dict[int, bytes], free: dict[bytes, dict[str, float]]
                  ) -> dict[int, bytes] | None:
    """A node per bundle of ``todo`` (the others stay on ``fixed`` nodes) by ``strategy``,
    from the nodes' ``free`` resources; None when they do not fit now."""
    free = {node_id: dict(f) for node_id, f in free.items()}
    order = sorted(free)
    if not order:
        return None
    if strategy == "STRICT_PACK":
        candidates = sorted(set(fixed.values())) or order
        for node_id in candidates:
            if node_id in free and _all_fit(dict(free[node_id]), [bundles[i] for i in todo]):
                return {i: node_id for i in todo}
        return None
    used: dict[bytes, int] = {}
    for node_id in fixed.values():
        used[node_id] = used.get(node_id, 0) + 1
    out: dict[int, bytes] = {}
    for index in todo:
        bundle = bundles[index]
        able = [n for n in order if _fits(free[n], bundle)]
        if strategy == "STRICT_SPREAD":
            able = [n for n in able if n not in used]
        if not able:
            return None
        if strategy == "PACK":  # the node most used so far, then the most free CPU
            pick = min(able, key=lambda n: (-used.get(n, 0), -free[n].get("CPU", 0.0), n))
        else:  # SPREAD, STRICT_SPREAD: the node least used so far
            pick = min(able, key=lambda n: (used.get(n, 0), -free[n].get("CPU", 0.0), n))
        out[index] = pick
        used[pick] = used.get(pick, 0) + 1
        _take(free[pick], bundle)
    return out
