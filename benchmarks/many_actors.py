"""Many actors created at once: how long until every one answers, and whether any start failed.

Creates ``--actors`` actors with ``num_cpus=0`` in one go (each needs a worker process of its
own), calls each once, and prints the time from the first ``.remote()`` to the last answer,
the raylet's failed worker starts, the most workers seen starting at once, and the memory
(USS) of all the workers at the end::

    python benchmarks/many_actors.py [--actors 1000]
"""

from __future__ import annotations

import argparse
import threading
import time

import psutil

import cellfleet as ray
from cellfleet import _context
from cellfleet import _messages as m


@ray.remote(num_cpus=0)
class Member:
    def ping(self, i: int) -> int:
        return i


def pool_stats() -> dict[str, int]:
    return _context.core.request("raylet", m.GetNodeStats())["pool"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=1000)
    args = parser.parse_args()
    ray.init(object_store_memory=64 * 2**20)
    most_starting = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal most_starting
        while not done.is_set():
            most_starting = max(most_starting, pool_stats()["starting"])
            done.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    start = time.perf_counter()
    watcher.start()
    actors = [Member.remote() for _ in range(args.actors)]
    answers = ray.get([a.ping.remote(i) for i, a in enumerate(actors)], timeout=3600)
    elapsed = time.perf_counter() - start
    done.set()
    watcher.join()
    assert answers == list(range(args.actors))
    stats = pool_stats()
    pids = [w["pid"] for w in _context.core.request("raylet", m.GetNodeStats())["workers"]]
    uss = sum(psutil.Process(pid).memory_full_info().uss for pid in pids)
    print(f"{args.actors} actors up in {elapsed:.1f} s ({args.actors / elapsed:.1f} /s)")
    print(f"failed worker starts: {stats['failed_starts']}; most starting at once: "
          f"{most_starting} (limit {stats['startup_concurrency']})")
    print(f"workers' memory (USS): {uss / 2**30:.2f} GiB, "
          f"{uss / max(1, len(pids)) / 2**20:.1f} MiB each")
    ray.shutdown()


if __name__ == "__main__":
    main()
