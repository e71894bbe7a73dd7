"""Multi-node figures on cellfleet and on Ray, side by side, with 4 nodes on this machine.

Both run the same code on their own ``cluster_utils.Cluster`` (a head and 3 nodes of 1 CPU,
each its own raylet and object store): each system in a child process of its own interpreter
(Ray from ``--ray-python``, skipped when that interpreter has no Ray), one after the other,
so they never share the machine. The figures:

- transfer node to node, 100 MB and 1 GB: ``get`` on the driver of an array a task made on
  another node (GB/s; after a warm-up, so the stores' pages have been used once);
- broadcast: a 200 MB array the driver put, read at once by a task on each of the 3 other
  nodes (seconds until all have read it);
- tasks async over 4 nodes (no-op tasks submitted at once; they spill back from the head)
  and SPREAD of 1,000 tasks (tasks/s);
- placement group create/remove, one bundle (``placement_groups.cycle``, /s);
- ``add_node`` → first task running there: a task asks for a resource only the new node has,
  the node is added, and the clock stops at its result (ms).

Each figure is two warm-up runs then ``--repeats`` runs; the table shows medians and the ratio
(> 1: cellfleet ahead)::

    python benchmarks/multinode.py [--repeats 3] [--tasks 5000] [--ray-python PATH]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from placement_groups import cycle  # noqa: E402  (the same workload, either system)

RAY_PYTHON = "/root/rayvenv/bin/python"
MB = 2**20
STORE = 8 << 30  # per node (sparse): a freed 1 GB copy keeps its pages (under an eighth)
LOWER_IS_BETTER = {"s", "ms"}


def define(ray: Any) -> dict[str, Any]:
    """The remote functions of the workloads, for ``ray`` (cellfleet or Ray)."""
    import numpy as np

    @ray.remote(resources={"maker": 1})
    def make(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.uint8)

    @ray.remote(resources={"reader": 1})
    def read(array: np.ndarray) -> int:
        return int(array[-1])

    @ray.remote
    def noop() -> None:
        return None

    @ray.remote
    def node_of() -> str:
        return ray.get_runtime_context().get_node_id()

    return {"make": make, "read": read, "noop": noop, "node_of": node_of}


def transfer(ray: Any, fns: dict, size: int) -> float:
    """GB/s of a ``get`` on the driver of an array made on another node."""
    ref = fns["make"].remote(size)
    ray.wait([ref], fetch_local=False)  # made, not yet moved (Ray pulls in wait)
    start = time.perf_counter()
    value = ray.get(ref)
    elapsed = time.perf_counter() - start
    assert value.nbytes == size
    return size / elapsed / 1e9


def broadcast(ray: Any, fns: dict, size: int, readers: int) -> float:
    """Seconds until a task on each of ``readers`` nodes has read one put array."""
    import numpy as np

    ref = ray.put(np.ones(size, dtype=np.uint8))
    ray.get([fns["read"].remote(np.ones(1, dtype=np.uint8)) for _ in range(readers)])
    start = time.perf_counter()
    assert ray.get([fns["read"].remote(ref) for _ in range(readers)]) == [1] * readers
    return time.perf_counter() - start


def task_rate(ray: Any, task: Any, n: int) -> float:
    """Tasks per second of ``n`` tasks submitted at once and gathered."""
    start = time.perf_counter()
    ray.get([task.remote() for _ in range(n)])
    return n / (time.perf_counter() - start)


def first_task_on_new_node(ray: Any, cluster: Any, fns: dict, index: int) -> float:
    """Milliseconds from ``add_node`` to the result of a task only that node could run."""
    ref = fns["node_of"].options(resources={f"new{index}": 1}).remote()  # fits no node yet
    start = time.perf_counter()
    node = cluster.add_node(num_cpus=1, resources={f"new{index}": 1},
                            object_store_memory=100 * MB)
    assert ray.get(ref, timeout=60) == node.node_id
    elapsed = time.perf_counter() - start
    cluster.remove_node(node)
    return elapsed * 1000


def figures(ray: Any, cluster: Any, fns: dict, tasks: int) -> list[tuple[str, str, Callable]]:
    """``(name, unit, one run)`` of every figure."""
    joins = iter(range(1_000))
    return [
        ("transfer 100 MB", "GB/s", lambda: transfer(ray, fns, 100 * MB)),
        ("transfer 1 GB", "GB/s", lambda: transfer(ray, fns, 1000 * MB)),
        ("broadcast 200 MB to 3 nodes", "s", lambda: broadcast(ray, fns, 200 * MB, 3)),
        ("tasks async over 4 nodes", "tasks/s", lambda: task_rate(ray, fns["noop"], tasks)),
        ("SPREAD of 1,000 tasks", "tasks/s", lambda: task_rate(
            ray, fns["noop"].options(scheduling_strategy="SPREAD"), 1000)),
        ("placement group create/remove", "/s", lambda: 100 / cycle(ray, 100, 1, "PACK")),
        ("add_node → first task there", "ms",
         lambda: first_task_on_new_node(ray, cluster, fns, next(joins))),
    ]


def child(system: str, repeats: int, tasks: int, only: str) -> None:
    """Run every figure on ``system`` and print one JSON line each."""
    ray = importlib.import_module(system)
    importlib.import_module(f"{system}.util.placement_group")
    cluster_utils = importlib.import_module(f"{system}.cluster_utils")
    extra = {"include_dashboard": False} if system == "ray" else {}
    node = {"num_cpus": 1, "object_store_memory": STORE, "resources": {"custom": 100}}
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={**node, **extra})
    cluster.add_node(**{**node, "resources": {"custom": 100, "maker": 1, "reader": 1}})
    for _ in range(2):
        cluster.add_node(**{**node, "resources": {"custom": 100, "reader": 1}})
    ray.init(address=cluster.address, **({"log_to_driver": False} if system == "ray" else {}))
    try:
        fns = define(ray)
        for name, unit, run in figures(ray, cluster, fns, tasks):
            if only and only not in name:
                continue
            run(), run()  # warm-up: the stores' pages used, connections and workers up
            values = [run() for _ in range(repeats)]
            print(json.dumps({"name": name, "unit": unit, "values": values}), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


def run_child(python: str, system: str, args: argparse.Namespace) -> dict[str, dict]:
    """One system's figures, from a child process of its own interpreter."""
    command = [python, os.path.abspath(__file__), "--child", system, "--repeats",
               str(args.repeats), "--tasks", str(args.tasks), "--only", args.only]
    env = dict(os.environ, RAY_DEDUP_LOGS="0", PYTHONWARNINGS="ignore")
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env,
                          cwd="/tmp")
    out = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            figure = json.loads(line)
            out[figure["name"]] = figure
    if done.returncode != 0:
        print(f"{system} exited {done.returncode}: "
              f"{done.stderr.strip().splitlines()[-3:]}", file=sys.stderr)
    return out


def has_ray(python: str) -> bool:
    if not os.path.exists(python):
        return False
    return subprocess.run([python, "-c", "import ray"], capture_output=True).returncode == 0


def table(results: dict[str, dict[str, dict]]) -> None:
    """Medians per system and cellfleet's lead (> 1: ahead, whatever the unit)."""
    names = list(results["cellfleet"]) or list(results.get("ray", {}))
    print(f"{'figure':34} {'Ray 2.60':>12} {'cellfleet':>12} {'ahead x':>8}")
    for name in names:
        mine = results["cellfleet"].get(name)
        theirs = results.get("ray", {}).get(name)
        unit = (mine or theirs)["unit"]
        c = statistics.median(mine["values"]) if mine else float("nan")
        r = statistics.median(theirs["values"]) if theirs else float("nan")
        ratio = r / c if unit in LOWER_IS_BETTER else c / r
        print(f"{name:34} {r:12,.2f} {c:12,.2f} {ratio:8.2f}   {unit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--only", default="", help="only the figures whose name has this")
    parser.add_argument("--ray-python", default=RAY_PYTHON)
    parser.add_argument("--child", choices=["cellfleet", "ray"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeats, args.tasks, args.only)
        return
    results = {}
    if has_ray(args.ray_python):
        results["ray"] = run_child(args.ray_python, "ray", args)
    else:
        print(f"no Ray at {args.ray_python}: cellfleet only", file=sys.stderr)
    results["cellfleet"] = run_child(sys.executable, "cellfleet", args)
    table(results)


if __name__ == "__main__":
    main()
