"""Scheduling across nodes on this machine (``cluster_utils.Cluster``, 4 nodes of 1 CPU):

- ``add_node`` → first task running there (``multinode.first_task_on_new_node``);
- tasks async over 4 nodes: ``--tasks`` no-op tasks submitted at once and gathered;
- SPREAD of 1,000 tasks: the same with ``scheduling_strategy="SPREAD"``;
- a node killed (SIGKILL) while it runs a task → that task's retry finished on another node.

Each figure is a warm-up then ``--repeats`` timed runs (mean ± standard deviation)::

    python benchmarks/multinode_scheduling.py [--tasks 10000] [--repeats 4]
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import tempfile
import time
from collections import Counter

from multinode import define, first_task_on_new_node, task_rate

import cellfleet as ray
from cellfleet.cluster_utils import Cluster


@ray.remote(resources={"r": 1}, max_retries=1)
def report_then_wait(gate: str) -> str:
    here = ray.get_runtime_context().get_node_id()
    with open(f"{gate}.{here}", "w"):
        pass
    while not os.path.exists(gate):
        time.sleep(0.002)
    return here


def failover(cluster: Cluster, repeats: int) -> list[float]:
    """Seconds from SIGKILL of the node running a task to the task's retried result."""
    times = []
    with tempfile.TemporaryDirectory() as folder:
        for i in range(repeats):
            nodes = [cluster.add_node(num_cpus=1, resources={"r": 1}) for _ in range(2)]
            gate = os.path.join(folder, f"gate{i}")
            ref = report_then_wait.remote(gate)
            while not (started := glob.glob(f"{gate}.*")):
                time.sleep(0.002)
            (doomed,) = [n for n in nodes if started[0].endswith(n.node_id)]
            open(gate, "w").close()  # the retry returns at once
            start = time.perf_counter()
            doomed._processes.stop(graceful=False)
            ray.get(ref, timeout=60)
            times.append(time.perf_counter() - start)
            for node in nodes:
                cluster.remove_node(node)
    return times


def rate(task: ray.remote_function.RemoteFunction, n: int, repeats: int) -> list[float]:
    task_rate(ray, task, n)  # warm-up: leases on every node
    return [task_rate(ray, task, n) for _ in range(repeats)]


def show(name: str, values: list[float], unit: str) -> None:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    print(f"{name:<42} {statistics.mean(values):>10,.0f} ± {spread:,.0f} {unit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        for _ in range(3):
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address)
        fns = define(ray)
        show("tasks async over 4 nodes", rate(fns["noop"], args.tasks, args.repeats), "tasks/s")
        spread = fns["noop"].options(scheduling_strategy="SPREAD")
        show("SPREAD 1,000 tasks", rate(spread, 1000, args.repeats), "tasks/s")
        where = Counter(ray.get([fns["node_of"].options(scheduling_strategy="SPREAD").remote()
                                 for _ in range(1000)]))
        print(f"{'SPREAD 1,000 tasks: tasks per node':<42} {sorted(where.values())}")
        show("add_node → first task's result there",
             [first_task_on_new_node(ray, cluster, fns, i) for i in range(args.repeats)], "ms")
        show("node killed → its task's retry finished", [s * 1000 for s in failover(
            cluster, args.repeats)], "ms")
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
