"""``python -m cellfleet.microbenchmark``: Ray's microbenchmark figures, measured on cellfleet.

Prints the figures ``ray microbenchmark`` prints, under the same names and with the same
workloads (``ray/_private/ray_perf.py``), so the two outputs can be read side by side::

    single client tasks sync per second 1234.5 +- 12.3

plus the figures ``/work/shared/tools/vs_ray.py`` compares (measured exactly as it does):
start-up to first result, idle footprint, put/get of a 100 MB numpy array.

Ray suffixes its small put/get figures with "(Plasma Store)"; here small values are inlined
and never touch shared memory, so the suffix is left off.

Adding a figure is adding one :class:`Figure` to :data:`FIGURES`: a name, a unit and a
function of the :class:`Bench` that returns a :class:`Result` (usually via
:meth:`Bench.rate`, which does Ray's warm-up and repeats).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cellfleet

__all__ = ["FIGURES", "Bench", "Figure", "Result", "main"]

REPEATS = 4  # timed repeats per rate figure, as Ray's timeit
GB = 1e9


# -- the functions the figures run as tasks (module level: workers import them by name) ------

def small_value() -> bytes:
    return b"ok"


def noop(x: Any = None) -> Any:
    return x


_remote_small_value: Any = None


def small_value_batch(n: int) -> int:
    """A task that submits ``n`` tasks and waits for them (Ray: ``Actor.small_value_batch``)."""
    cellfleet.get([_remote_small_value_task().remote() for _ in range(n)])
    return 0


def create_object_containing_ref() -> list:
    return [cellfleet.put(1) for _ in range(10000)]


class Actor:
    """Ray's ``ray_perf.Actor``: a method returning a small value, and one taking an arg."""

    def small_value(self) -> bytes:
        return b"ok"

    def small_value_arg(self, x: Any) -> bytes:
        return b"ok"

    def small_value_batch(self, n: int) -> int:
        cellfleet.get([_remote_small_value_task().remote() for _ in range(n)])
        return 0


class AsyncActor:
    """Ray's ``ray_perf.AsyncActor``."""

    async def small_value(self) -> bytes:
        return b"ok"


class Client:
    """Ray's ``ray_perf.Client``: calls a set of actors many times, for the 1:n and n:n cases."""

    def __init__(self, servers: Any) -> None:
        self.servers = servers if isinstance(servers, list) else [servers]

    def small_value_batch(self, n: int) -> int:
        refs = [s.small_value.remote() for s in self.servers for _ in range(n)]
        cellfleet.get(refs)
        return 0

    def small_value_batch_arg(self, n: int) -> int:
        x = cellfleet.put(0)
        refs = [s.small_value_arg.remote(x) for s in self.servers for _ in range(n)]
        cellfleet.get(refs)
        return 0


def _remote_small_value_task() -> Any:
    global _remote_small_value
    if _remote_small_value is None:
        _remote_small_value = cellfleet.remote(small_value)
    return _remote_small_value


# -- measuring --------------------------------------------------------------------------------

@dataclass
class Result:
    value: float
    stdev: float | None = None  # None for a figure measured once
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Figure:
    name: str
    unit: str  # "/s" (printed as Ray's "per second"), "GB/s", "s" or "MB"
    measure: Callable[[Bench], Result]
    vs_ray: str | None = None  # the same figure's name in vs_ray.py, if it has one


@dataclass
class Bench:
    """What the figures share: the options and the state set up before the first figure."""

    duration: float
    num_cpus: int
    startup_s: float = 0.0
    pids_before: set[int] = field(default_factory=set)
    session_dir: str | None = None
    _remotes: dict[tuple, Any] = field(default_factory=dict)

    def remote(self, fn: Callable, **options: Any) -> Any:
        """``cellfleet.remote(fn)`` (a function or a class), made once per target and options."""
        key = (fn.__name__, tuple(sorted(options.items())))
        if key not in self._remotes:
            self._remotes[key] = cellfleet.remote(**options)(fn) if options else \
                cellfleet.remote(fn)
        return self._remotes[key]

    def rate(self, fn: Callable[[], Any], multiplier: float = 1.0) -> Result:
        """Calls of ``fn`` per second, times ``multiplier``: Ray's ``timeit``, scaled.

        A warm-up, then ``REPEATS`` timed runs; warm-up and runs share ``duration`` equally.
        The result is the mean over the runs, ± their (population) standard deviation.
        """
        slot = self.duration / (REPEATS + 1)
        start, count = time.perf_counter(), 0
        while count == 0 or time.perf_counter() - start < slot:
            fn()
            count += 1
        step = count // 10 + 1
        stats = []
        for _ in range(REPEATS):
            start, count = time.perf_counter(), 0
            while time.perf_counter() - start < slot:
                for _ in range(step):
                    fn()
                count += step
            stats.append(multiplier * count / (time.perf_counter() - start))
        return Result(statistics.fmean(stats), statistics.pstdev(stats))


# -- the figures ------------------------------------------------------------------------------

def startup(b: Bench) -> Result:
    """``init`` then the first ``get`` of a task (timed in :func:`main`, as vs_ray.py does)."""
    return Result(b.startup_s)


def idle_footprint(b: Bench) -> Result:
    """USS of the driver and of every runtime process, 2 s after the first result.

    As vs_ray.py: the driver's descendants plus processes started since the benchmark began
    whose command line names cellfleet -- here also this session's directory, so that other
    clusters running on the machine meanwhile are not counted.
    """
    import psutil

    time.sleep(2)
    me = psutil.Process()
    procs = {p.pid: p for p in me.children(recursive=True)}
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if p.pid not in b.pids_before and "cellfleet" in cmdline and (
            b.session_dir is None or b.session_dir in cmdline
        ):
            procs[p.pid] = p
    procs.pop(me.pid, None)
    uss = me.memory_full_info().uss
    per_process = {"driver": round(uss / 2**20, 1)}
    for p in procs.values():
        try:
            u = p.memory_full_info().uss
            name = " ".join(p.cmdline()[1:3]).removeprefix("-m cellfleet.") or p.name()
        except psutil.Error:
            continue
        uss += u
        per_process[f"{name} ({p.pid})"] = round(u / 2**20, 1)
    return Result(uss / 2**20, extra={"processes": len(procs) + 1, "uss_mb": per_process})


def tasks_sync(b: Bench) -> Result:
    f = b.remote(small_value)
    return b.rate(lambda: cellfleet.get(f.remote()))


def tasks_async(b: Bench) -> Result:
    f = b.remote(small_value)
    return b.rate(lambda: cellfleet.get([f.remote() for _ in range(1000)]), 1000)


def tasks_and_get_batch(b: Bench) -> Result:
    f = b.remote(small_value)
    return b.rate(lambda: cellfleet.get([f.remote() for _ in range(1000)]))


def multi_client_tasks_async(b: Bench, clients: int = 4, n: int = 1000) -> Result:
    """``clients`` tasks each submitting ``n`` tasks (Ray uses 4 actors for the clients)."""
    f = b.remote(small_value_batch)
    return b.rate(lambda: cellfleet.get([f.remote(n) for _ in range(clients)]), clients * n)


def put_calls(b: Bench) -> Result:
    return b.rate(lambda: cellfleet.put(0))


def get_calls(b: Bench) -> Result:
    ref = cellfleet.put(0)
    return b.rate(lambda: cellfleet.get(ref))


def put_gigabytes(b: Bench) -> Result:
    import numpy as np

    arr = np.zeros(100 * 1024 * 1024, dtype=np.int64)  # 800 MiB, as Ray
    return b.rate(lambda: cellfleet.put(arr), 8 * 0.1)


def get_containing_10k_refs(b: Bench) -> Result:
    ref = b.remote(create_object_containing_ref).remote()
    cellfleet.get(ref)
    return b.rate(lambda: cellfleet.get(ref))


def wait_1k_refs(b: Bench) -> Result:
    f = b.remote(small_value)

    def wait_multiple_refs() -> None:
        not_ready = [f.remote() for _ in range(1000)]
        for _ in range(1000):
            _, not_ready = cellfleet.wait(not_ready)

    return b.rate(wait_multiple_refs)


def _actor(b: Bench, cls: type, **options: Any) -> Any:
    handle = b.remote(cls, **options).remote()
    cellfleet.get(handle.small_value.remote())
    return handle


def actor_calls_sync(b: Bench) -> Result:
    a = _actor(b, Actor)
    return b.rate(lambda: cellfleet.get(a.small_value.remote()))


def actor_calls_async(b: Bench) -> Result:
    a = _actor(b, Actor)
    return b.rate(lambda: cellfleet.get([a.small_value.remote() for _ in range(1000)]), 1000)


def actor_calls_concurrent(b: Bench) -> Result:
    a = _actor(b, Actor, max_concurrency=16)
    return b.rate(lambda: cellfleet.get([a.small_value.remote() for _ in range(1000)]), 1000)


def one_to_n_actor_calls_async(b: Bench, n: int = 4) -> Result:
    actors = [_actor(b, Actor) for _ in range(n)]
    client = b.remote(Client).remote(actors)
    return b.rate(lambda: cellfleet.get(client.small_value_batch.remote(1000)), 1000 * n)


def n_to_n_actor_calls_async(b: Bench, n: int = 2) -> Result:
    actors = [_actor(b, Actor) for _ in range(n)]
    clients = [b.remote(Client).remote(a) for a in actors]
    return b.rate(lambda: cellfleet.get([c.small_value_batch.remote(1000) for c in clients]),
                  1000 * n)


def n_to_n_actor_calls_with_arg_async(b: Bench, n: int = 2) -> Result:
    actors = [_actor(b, Actor) for _ in range(n)]
    clients = [b.remote(Client).remote(a) for a in actors]
    return b.rate(
        lambda: cellfleet.get([c.small_value_batch_arg.remote(1000) for c in clients]), 1000 * n)


def async_actor_calls_sync(b: Bench) -> Result:
    a = _actor(b, AsyncActor)
    return b.rate(lambda: cellfleet.get(a.small_value.remote()))


def async_actor_calls_async(b: Bench) -> Result:
    a = _actor(b, AsyncActor)
    return b.rate(lambda: cellfleet.get([a.small_value.remote() for _ in range(1000)]), 1000)


def _numpy_100mb() -> Any:
    import numpy as np

    return np.ones(100 * 2**20, dtype=np.uint8)  # vs_ray.py's array


def put_100mb_numpy(b: Bench) -> Result:
    arr = _numpy_100mb()
    return b.rate(lambda: cellfleet.put(arr), arr.nbytes / GB)


def _in_shared_memory(address: int) -> bool:
    """Whether ``address`` lies in a mapping of a ``/dev/shm`` file in this process."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            low, high = (int(x, 16) for x in parts[0].split("-"))
            if low <= address < high:
                return len(parts) == 6 and parts[5].strip().startswith("/dev/shm/")
    return False


def get_100mb_numpy(b: Bench) -> Result:
    arr = _numpy_100mb()
    ref = cellfleet.put(arr)
    del arr
    got = cellfleet.get(ref)
    address = got.__array_interface__["data"][0]
    zero_copy = _in_shared_memory(address) and not got.flags.writeable
    del got
    result = b.rate(lambda: cellfleet.get(ref), 100 * 2**20 / GB)
    result.extra["zero_copy"] = zero_copy
    return result


FIGURES: list[Figure] = [
    Figure("start-up to first result", "s", startup, "start-up to first result"),
    Figure("idle footprint, 2 workers", "MB", idle_footprint, "idle footprint, 2 workers"),
    Figure("single client tasks sync", "/s", tasks_sync, "tasks sync"),
    Figure("single client tasks async", "/s", tasks_async, "tasks async"),
    Figure("single client tasks and get batch", "/s", tasks_and_get_batch),
    Figure("multi client tasks async", "/s", multi_client_tasks_async),
    Figure("single client put calls", "/s", put_calls, "put calls"),
    Figure("single client get calls", "/s", get_calls, "get calls"),
    Figure("single client put gigabytes", "/s", put_gigabytes),
    Figure("single client get object containing 10k refs", "/s", get_containing_10k_refs),
    Figure("single client wait 1k refs", "/s", wait_1k_refs),
    Figure("put 100 MB numpy", "GB/s", put_100mb_numpy, "put 100 MB numpy"),
    Figure("get 100 MB numpy", "GB/s", get_100mb_numpy, "get 100 MB numpy"),
    Figure("1:1 actor calls sync", "/s", actor_calls_sync, "1:1 actor calls sync"),
    Figure("1:1 actor calls async", "/s", actor_calls_async, "1:1 actor calls async"),
    Figure("1:1 actor calls concurrent", "/s", actor_calls_concurrent),
    Figure("1:n actor calls async", "/s", one_to_n_actor_calls_async),
    Figure("n:n actor calls async", "/s", n_to_n_actor_calls_async),
    Figure("n:n actor calls with arg async", "/s", n_to_n_actor_calls_with_arg_async),
    Figure("1:1 async-actor calls sync", "/s", async_actor_calls_sync),
    Figure("1:1 async-actor calls async", "/s", async_actor_calls_async),
]


# -- output -----------------------------------------------------------------------------------

def _label(fig: Figure) -> str:
    return f"{fig.name} per second" if fig.unit == "/s" else f"{fig.name} ({fig.unit})"


def _number(x: float) -> str:
    return f"{x:.2f}" if abs(x) >= 10 else f"{x:.3g}"


def _report(fig: Figure, result: Result, as_json: bool) -> None:
    if as_json:
        line: dict[str, Any] = {"name": fig.name, "value": result.value, "unit": fig.unit}
        if result.stdev is not None:
            line["stdev"] = result.stdev
        if fig.vs_ray:
            line["vs_ray"] = fig.vs_ray
        line.update(result.extra)
        print(json.dumps(line), flush=True)
        return
    text = f"{_label(fig)} {_number(result.value)}"
    if result.stdev is not None:
        text += f" +- {_number(result.stdev)}"
    if "zero_copy" in result.extra:
        text += " / zero-copy" if result.extra["zero_copy"] else " / copied"
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cellfleet microbenchmark",
        description="Ray's microbenchmark figures (ray microbenchmark), measured on cellfleet.",
    )
    parser.add_argument("--num-cpus", type=int, default=2,
                        help="CPUs of the local cluster (default 2); also the number of workers "
                             "started ahead, so the footprint figure is for 2 workers at 2")
    parser.add_argument("--duration", type=float, default=2.0,
                        help="seconds per figure, warm-up included (default 2)")
    parser.add_argument("--only", metavar="SUBSTRING", default=None,
                        help="run only the figures whose name contains SUBSTRING")
    parser.add_argument("--json", action="store_true", help="one JSON line per figure")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.num_cpus < 1:
        parser.error("--duration must be > 0 and --num-cpus >= 1")
    figures = [f for f in FIGURES if args.only is None or args.only in f.name]
    if not figures:
        parser.error(f"no figure's name contains {args.only!r}")

    import psutil

    bench = Bench(duration=args.duration, num_cpus=args.num_cpus,
                  pids_before={p.pid for p in psutil.process_iter()})
    # Timed as vs_ray.py times it: from just before init() -- which, the public API being
    # loaded on first use, includes loading the driver's API -- to the first task's value.
    t0 = time.perf_counter()
    try:
        info = cellfleet.init(num_cpus=args.num_cpus, log_to_driver=False)
    except RuntimeError as exc:  # already initialized in this process
        print(f"cellfleet microbenchmark starts its own cluster: {exc}", file=sys.stderr)
        return 2
    first = bench.remote(noop)
    cellfleet.get(first.remote())
    bench.startup_s = time.perf_counter() - t0
    bench.session_dir = info.get("session_dir")
    try:
        for fig in figures:
            _report(fig, fig.measure(bench), args.json)
    except KeyboardInterrupt:
        return 130
    finally:
        cellfleet.shutdown()
    return 0


if __name__ == "__main__":
    # Run as the importable module, not as __main__, so that workers find the task functions
    # by name (cellfleet.microbenchmark.small_value) instead of receiving pickled copies.
    from cellfleet.microbenchmark import main as _main

    sys.exit(_main())
