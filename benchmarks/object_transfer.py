"""Objects moving between nodes on this machine (``cluster_utils.Cluster``, 1 CPU each):

- ``get`` on the driver (head node) of an array a task made on another node;
- a task on another node taking an array the driver put on the head node;
- a broadcast: one array the driver put, read by a task on each of the other nodes at once.

The same code runs on Ray (``--ray``, with Ray's own ``cluster_utils``) for comparison. Each
figure is a warm-up then ``--repeats`` timed runs (mean ± standard deviation)::

    python benchmarks/object_transfer.py [--mb 100] [--nodes 4] [--repeats 5] [--ray]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

from multinode import broadcast, define, transfer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=4, help="nodes, the head included")
    parser.add_argument("--ray", action="store_true", help="run on Ray instead")
    args = parser.parse_args()
    ray = importlib.import_module("ray" if args.ray else "cellfleet")
    cluster_utils = importlib.import_module(f"{ray.__name__}.cluster_utils")
    import numpy as np

    size = args.mb * 2**20
    store = {"object_store_memory": 4 * size}
    cluster = cluster_utils.Cluster(initialize_head=True,
                                    head_node_args={"num_cpus": 1, **store})
    cluster.add_node(num_cpus=1, resources={"maker": 1, "reader": 1}, **store)
    for _ in range(args.nodes - 2):
        cluster.add_node(num_cpus=1, resources={"reader": 1}, **store)
    ray.init(address=cluster.address)
    try:
        fns = define(ray)
        first = fns["read"].options(resources={"maker": 1})

        def push_to_task() -> float:
            ref = ray.put(np.ones(size, dtype=np.uint8))
            ray.get(first.remote(np.ones(1, dtype=np.uint8)))  # the task's worker is up
            start = time.perf_counter()
            assert ray.get(first.remote(ref)) == 1
            return size / (time.perf_counter() - start) / 1e9

        readers = args.nodes - 1
        for name, run in (("get of an object made on another node",
                           lambda: transfer(ray, fns, size)),
                          ("task on another node reads a put object", push_to_task),
                          (f"broadcast to {readers} nodes (total)",
                           lambda: readers * size / broadcast(ray, fns, size, readers) / 1e9)):
            run()
            rates = [run() for _ in range(args.repeats)]
            spread = statistics.stdev(rates) if len(rates) > 1 else 0.0
            print(f"{ray.__name__:<10} {name:<44} {args.mb} MB: "
                  f"{statistics.mean(rates):5.2f} ± {spread:.2f} GB/s")
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
