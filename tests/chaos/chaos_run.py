"""A chaos run: a workload on a 4-node cluster while a seeded killer removes nodes and
workers (``kill -9``) and adds new ones; afterwards every result must be right.

The workload, round after round: a task DAG over objects in shared memory (lost with their
node, rebuilt from lineage), tasks that submit tasks, tasks that borrow refs, and an actor
that restarts from a checkpoint the test keeps (its calls carry sequence numbers, so a call
replayed after a restart is applied once). Every task may retry forever (``max_retries=-1``):
what is checked is that the runtime recovers, not how often it had to.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cloudpickle
import numpy as np
import psutil
from chaos_plan import ChaosPlan, Fault

import cellfleet as ray
from cellfleet.cluster_utils import Cluster, ClusterNode

cloudpickle.register_pickle_by_value(sys.modules[__name__])

__all__ = ["ChaosReport", "run_chaos"]

LEAF_BYTES = 1 << 20  # in shared memory (above the inline threshold): lost with its node
LEAVES = 8
GET_TIMEOUT_S = 120.0  # a round that takes longer than this has hung


@ray.remote(max_retries=-1)
def leaf(value: int) -> np.ndarray:
    return np.full(LEAF_BYTES // 8, value, dtype=np.int64)


@ray.remote(max_retries=-1)
def combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + b


@ray.remote(max_retries=-1)
def square(x: int) -> int:
    return x * x


@ray.remote(max_retries=-1)
def fan_out(n: int) -> int:
    """A task that submits tasks and waits for them (nested)."""
    return sum(ray.get([square.remote(i) for i in range(n)]))


@ray.remote(max_retries=-1)
def first_items(borrowed: list) -> list[int]:
    """Borrows the refs inside its argument and reads them."""
    return [int(array[0]) for array in ray.get(borrowed)]


@ray.remote(max_restarts=-1, max_task_retries=-1)
class Ledger:
    """A running total kept in a checkpoint file the test owns; ``add`` is idempotent."""

    def __init__(self, checkpoint: str) -> None:
        self.checkpoint = Path(checkpoint)
        state = json.loads(self.checkpoint.read_text()) if self.checkpoint.exists() else {}
        self.last = state.get("last", 0)
        self.total = state.get("total", 0)

    def add(self, seq: int, value: int) -> int:
        if seq > self.last:
            self.last, self.total = seq, self.total + value
            scratch = self.checkpoint.with_suffix(".tmp")
            scratch.write_text(json.dumps({"last": self.last, "total": self.total}))
            os.replace(scratch, self.checkpoint)
        return self.total


@dataclass
class ChaosReport:
    """What a run did: rounds of the workload, faults by kind, and round times."""

    seed: int
    seconds: float = 0.0
    rounds: int = 0
    results_checked: int = 0
    faults: Counter = field(default_factory=Counter)
    round_seconds: list[float] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)

    def summary(self) -> str:
        times = self.round_seconds or [0.0]
        faults = ", ".join(f"{n} {kind}" for kind, n in sorted(self.faults.items())) or "none"
        return (f"seed {self.seed}: {self.rounds} rounds in {self.seconds:.1f} s, "
                f"{self.results_checked} results checked, {len(self.wrong)} wrong; faults: "
                f"{faults}; round p50 {statistics.median(times):.2f} s, max {max(times):.2f} s")


class Killer(threading.Thread):
    """Carries out a :class:`ChaosPlan` on a :class:`Cluster` until stopped."""

    def __init__(self, cluster: Cluster, plan: ChaosPlan, report: ChaosReport) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.cluster, self.plan, self.report = cluster, plan, report
        self.stopping = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                fault = self.plan.next_fault(self._workers_by_node())
                if self.stopping.wait(fault.after):  # the pace of faults, not a handshake
                    return
                if fault.kind != "none":
                    self._make(fault)
                    self.report.faults[fault.kind] += 1
        except BaseException as exc:  # the test reports it
            self.failure = exc

    def _workers_by_node(self) -> dict[str, list[int]]:
        found = {}
        for node in self.cluster.worker_nodes:
            try:
                raylet = psutil.Process(node._processes.processes[0].pid)
                found[node.node_id] = [child.pid for child in raylet.children()]
            except psutil.NoSuchProcess:
                found[node.node_id] = []
        return found

    def _make(self, fault: Fault) -> None:
        if fault.kind == "kill-worker":
            try:
                os.kill(int(fault.victim), signal.SIGKILL)
            except ProcessLookupError:
                pass  # it exited on its own
        elif fault.kind == "kill-node":
            (node,) = [n for n in self.cluster.worker_nodes if n.node_id == fault.victim]
            self.cluster.remove_node(node, allow_graceful=False)
            self._add()
        elif fault.kind == "add-node":
            self._add()

    def _add(self) -> ClusterNode:
        return self.cluster.add_node(num_cpus=1)


def _round(ledger: ray.actor.ActorHandle, seq: int, report: ChaosReport) -> int:
    """One round of the workload; returns the ledger's next sequence number."""
    leaves = [leaf.remote(i) for i in range(LEAVES)]
    level = leaves
    while len(level) > 1:
        level = [combine.remote(a, b) for a, b in zip(level[::2], level[1::2])]
    nested = fan_out.remote(5)
    borrowed = first_items.remote(leaves[:3])
    calls = [ledger.add.remote(seq + i, i + 1) for i in range(3)]
    total, nested_sum, firsts, totals = ray.get(
        [level[0], nested, borrowed, calls[-1]], timeout=GET_TIMEOUT_S)
    got = {
        "dag": (int(total[0]), int(total[-1]), total.nbytes),
        "nested": nested_sum, "borrowed": firsts, "ledger-last": totals,
    }
    wanted = {
        "dag": (sum(range(LEAVES)),) * 2 + (LEAF_BYTES,),
        "nested": sum(i * i for i in range(5)), "borrowed": [0, 1, 2],
        "ledger-last": 1 + 6 * (report.rounds + 1),  # the first add(1), then 1 + 2 + 3 a round
    }
    for name in wanted:
        report.results_checked += 1
        if got[name] != wanted[name]:
            report.wrong.append(f"round {report.rounds}, {name}: {got[name]!r}, "
                                f"not {wanted[name]!r}")
    return seq + 3


def run_chaos(seed: int, seconds: float, checkpoint_dir: Path,
              mean_interval: float = 1.0) -> ChaosReport:
    """Run the workload for ``seconds`` under seed ``seed``'s faults; the report says what
    happened and what came out wrong. Every process started is stopped before it returns."""
    report = ChaosReport(seed)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    killer = None
    started = time.monotonic()
    try:
        for _ in range(3):
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address)
        ledger = Ledger.remote(str(checkpoint_dir / f"ledger-{seed}.json"))
        ray.get(ledger.add.remote(1, 1), timeout=GET_TIMEOUT_S)  # the actor is up
        seq = 2
        killer = Killer(cluster, ChaosPlan(seed, mean_interval=mean_interval), report)
        killer.start()
        while time.monotonic() - started < seconds and killer.failure is None:
            begun = time.monotonic()
            seq = _round(ledger, seq, report)
            report.rounds += 1
            report.round_seconds.append(time.monotonic() - begun)
    finally:
        if killer is not None:
            killer.stopping.set()
            killer.join(timeout=60)
        report.seconds = time.monotonic() - started
        ray.shutdown()
        cluster.shutdown()
    if killer is not None and killer.failure is not None:
        raise RuntimeError("the killer failed") from killer.failure
    return report
