"""One ``get`` of a million queued tasks on one node, and the memory it takes.

Ray's scalability envelope queues 1M tasks on one node (184 s on 64 cores). This submits
``--tasks`` no-op tasks at once, gathers them with one ``get``, and prints the time of each
phase and the peak resident memory of every process of the cluster, sampled while it runs::

    python benchmarks/queued_tasks.py [--tasks 1000000] [--num-cpus 2]
"""

from __future__ import annotations

import argparse
import threading
import time

import psutil

import cellfleet as ray


@ray.remote
def noop() -> None:
    return None


class PeakMemory:
    """Samples the RSS of this process and its descendants every ``interval`` seconds."""

    def __init__(self, interval: float = 0.25) -> None:
        self.peaks: dict[str, int] = {}
        self._interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._done.wait(self._interval):
            for proc in [me, *me.children(recursive=True)]:
                try:
                    cmdline = proc.cmdline()
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                role = next((a.split(".")[-1] for a in cmdline if a.startswith("cellfleet.")),
                            "driver")
                key = "worker (each)" if role == "worker" else role
                self.peaks[key] = max(self.peaks.get(key, 0), rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    ray.init(num_cpus=args.num_cpus)
    ray.get(noop.remote())
    with PeakMemory() as memory:
        start = time.perf_counter()
        refs = [noop.remote() for _ in range(args.tasks)]
        submitted = time.perf_counter()
        results = ray.get(refs)
        gathered = time.perf_counter()
    assert len(results) == args.tasks and results[-1] is None
    total = gathered - start
    print(f"{args.tasks:,} queued no-op tasks, one get, {args.num_cpus} CPUs")
    print(f"  submit {submitted - start:.1f} s, get {gathered - submitted:.1f} s, "
          f"total {total:.1f} s ({args.tasks / total:,.0f} tasks/s)")
    for role, peak in sorted(memory.peaks.items()):
        print(f"  peak RSS {role:14s} {peak / 2**20:8.0f} MB")
    ray.shutdown()


if __name__ == "__main__":
    main()
