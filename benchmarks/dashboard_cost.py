"""What an open task-graph page costs the runtime.

Runs bursts of no-op tasks alternately with and without a poller that does what the page
does (``graph`` with the cursor, once a second, on its own event loop thread), and prints the
task throughput of both and the poll latency::

    python benchmarks/dashboard_cost.py [--tasks 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time

import cellfleet as ray
from cellfleet.extension import data, discovery


@ray.remote
def noop():
    return None


def burst(n: int) -> float:
    start = time.perf_counter()
    ray.get([noop.remote() for _ in range(n)])
    return n / (time.perf_counter() - start)


class Poller:
    def __init__(self, cluster: discovery.ClusterInfo) -> None:
        self.cluster = cluster
        self.latencies: list[float] = []
        self.running = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._loop()), daemon=True)
        self.stop = False

    async def _loop(self) -> None:
        since = 0.0
        while not self.stop:
            if self.running.is_set():
                start = time.perf_counter()
                since = (await data.graph(self.cluster, since=since))["cursor"]
                self.latencies.append(time.perf_counter() - start)
            await asyncio.sleep(1.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    info = ray.init(num_cpus=2)
    cluster = next(c for c in discovery.list_clusters() if c.address == info["gcs_address"])
    poller = Poller(cluster)
    poller.thread.start()
    burst(2000)
    without, with_page = [], []
    for _ in range(args.rounds):
        poller.running.clear()
        without.append(burst(args.tasks))
        poller.running.set()
        with_page.append(burst(args.tasks))
    poller.stop = True
    a, b = statistics.median(without), statistics.median(with_page)
    print(f"tasks/s without a page: {a:,.0f}  with a task-graph page polling: {b:,.0f}  "
          f"({100 * (a - b) / a:+.1f}% slower)")
    lat = sorted(poller.latencies)
    print(f"graph poll latency: median {statistics.median(lat) * 1000:.0f} ms, "
          f"max {lat[-1] * 1000:.0f} ms over {len(lat)} polls")
    ray.shutdown()


if __name__ == "__main__":
    main()
