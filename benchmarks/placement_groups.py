"""Placement groups created and removed per second, on cellfleet or on Ray (the same code).

The workload is Ray's own microbenchmark ("placement group create/removal" in
``ray/_private/ray_perf.py``): create ``--groups`` groups of ``--bundles`` bundles of
``{"custom": 0.001}``, wait for each, then remove them all; the rate counts whole
create + wait + remove cycles. It runs on a ``cluster_utils.Cluster`` of ``--nodes`` nodes
of 1 CPU and 100 "custom" each, once with PACK and once with STRICT_SPREAD (one bundle per
node). A warm-up round, then ``--repeats`` timed rounds (mean ± standard deviation)::

    python benchmarks/placement_groups.py [--groups 100] [--repeats 5]
    /root/rayvenv/bin/python benchmarks/placement_groups.py --ray
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from typing import Any


def cycle(ray: Any, groups: int, bundles: int, strategy: str) -> float:
    """Seconds to create ``groups`` groups, wait for each, and remove them all."""
    start = time.perf_counter()
    pgs = [ray.util.placement_group([{"custom": 0.001}] * bundles, strategy=strategy)
           for _ in range(groups)]
    for pg in pgs:
        assert pg.wait(timeout_seconds=30)
    for pg in pgs:
        ray.util.remove_placement_group(pg)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ray", action="store_true", help="run on Ray instead of cellfleet")
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    name = "ray" if args.ray else "cellfleet"
    ray = importlib.import_module(name)
    importlib.import_module(f"{name}.util.placement_group")
    cluster = importlib.import_module(f"{name}.cluster_utils").Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"custom": 100}})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=1, resources={"custom": 100})
    ray.init(address=cluster.address)
    try:
        for strategy, bundles in (("PACK", 1), ("STRICT_SPREAD", args.nodes)):
            cycle(ray, args.groups, bundles, strategy)  # warm-up
            rates = [args.groups / cycle(ray, args.groups, bundles, strategy)
                     for _ in range(args.repeats)]
            spread = statistics.stdev(rates) if len(rates) > 1 else 0.0
            print(f"{name}: placement group create/remove, {bundles} bundle(s) {strategy}: "
                  f"{statistics.mean(rates):,.0f} ± {spread:,.0f} /s")
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
