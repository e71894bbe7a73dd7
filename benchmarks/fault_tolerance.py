"""Detection and recovery times, on cellfleet or on Ray (the same code, the same machine).

Each figure starts at a ``kill -9`` (``Cluster.remove_node(node, allow_graceful=False)``, or
SIGKILL of the GCS) and ends when the work is back:

- node death → the retried task running on another node (the task writes the time each
  attempt starts to a file);
- node death → a lost 100 MB object rebuilt (``get`` of it returns, through lineage);
- node death → a call to an actor that lived there answered by its restarted self;
- GCS killed → restarted on Redis → a named actor created and answering;
- spilling a store's worth of objects five times over, and reading them all back (GB/s).

Run each side in its own environment::

    python benchmarks/fault_tolerance.py [--repeats 3]
    /root/rayvenv/bin/python benchmarks/fault_tolerance.py --ray

The GCS figure needs ``redis-server`` on the PATH.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MB = 10**6
PASSWORD = "fault-tolerance-benchmark"


def _cluster(name: str, **head: Any) -> Any:
    return importlib.import_module(f"{name}.cluster_utils").Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, **head})


def _wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)  # polling a file the tasks write
    raise TimeoutError(f"{what} did not happen in {timeout:g} s")


def node_death_to_retry(ray: Any, name: str, scratch: Path) -> float:
    """Seconds from SIGKILL of the node running a task to its retry running elsewhere."""
    cluster = _cluster(name)
    doomed = cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    starts = scratch / "starts"
    starts.write_text("")
    try:
        @ray.remote(max_retries=3)
        def attempt(path: str) -> int:
            with open(path, "a") as out:
                out.write(f"{time.time()}\n")
            n = len(open(path).read().split())
            if n == 1:
                time.sleep(600)  # the first attempt waits for its node to die
            return n

        # The first attempt goes to the doomed node; retries anywhere (a soft preference).
        ref = attempt.options(scheduling_strategy=_affinity(ray, name, doomed, soft=True)
                              ).remote(str(starts))
        _wait_for(lambda: starts.read_text().strip(), 60, "the first attempt to start")
        killed = time.time()
        cluster.remove_node(doomed, allow_graceful=False)
        lines = _wait_for(lambda: starts.read_text().split()[1:], 120, "the retry to start")
        assert ray.get(ref, timeout=120) >= 2
        return float(lines[0]) - killed
    finally:
        ray.shutdown()
        cluster.shutdown()


def node_death_to_rebuilt_object(ray: Any, name: str, scratch: Path) -> float:
    """Seconds from SIGKILL of the node holding a task's 100 MB output to ``get`` returning
    it, made again from lineage on the node that is left."""
    import numpy as np

    cluster = _cluster(name, object_store_memory=400 * MB)
    doomed = cluster.add_node(num_cpus=1, object_store_memory=400 * MB)
    cluster.add_node(num_cpus=1, object_store_memory=400 * MB)
    ray.init(address=cluster.address)
    try:
        @ray.remote(max_retries=3)
        def make(size: int) -> Any:
            return np.ones(size, dtype=np.uint8)

        ref = make.options(scheduling_strategy=_affinity(ray, name, doomed, soft=True)
                           ).remote(100 * MB)
        ray.wait([ref], timeout=60, fetch_local=False)
        start = time.perf_counter()
        cluster.remove_node(doomed, allow_graceful=False)
        value = ray.get(ref, timeout=180)
        elapsed = time.perf_counter() - start
        assert value.nbytes == 100 * MB
        return elapsed
    finally:
        ray.shutdown()
        cluster.shutdown()


def node_death_to_restarted_actor(ray: Any, name: str, scratch: Path) -> float:
    """Seconds from SIGKILL of an actor's node to a call answered by the actor restarted on
    another node."""
    cluster = _cluster(name)
    doomed = cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    try:
        @ray.remote(max_restarts=1)
        class Pinger:
            def node(self) -> str:
                return ray.get_runtime_context().get_node_id()

        actor = Pinger.options(
            scheduling_strategy=_affinity(ray, name, doomed, soft=True)).remote()
        placed = ray.get(actor.node.remote(), timeout=60)
        assert placed == doomed.node_id, (placed, doomed.node_id)
        start = time.perf_counter()
        cluster.remove_node(doomed, allow_graceful=False)
        while True:  # until the restarted actor answers (a killed node's worker may linger)
            try:
                if ray.get(actor.node.remote(), timeout=120) != doomed.node_id:
                    return time.perf_counter() - start
            except ray.exceptions.RayActorError:
                pass
            time.sleep(0.01)  # not restarted yet: call again
    finally:
        ray.shutdown()
        cluster.shutdown()


def gcs_restart_to_first_actor(ray: Any, name: str, scratch: Path) -> float:
    """Seconds from SIGKILL of a GCS kept on Redis, through its restart, to a new named actor
    created and answering."""
    redis = _start_redis(scratch)
    try:
        if name == "ray":
            return _ray_gcs_restart(ray, redis)
        return _cellfleet_gcs_restart(ray, redis)
    finally:
        redis[0].kill()
        redis[0].wait()


def _start_redis(scratch: Path) -> tuple[subprocess.Popen, int]:
    import socket

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(scratch),
                             "--requirepass", PASSWORD],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    _wait_for(up, 10, "redis-server to listen")
    return proc, port


def _named_actor_answers(ray: Any, label: str) -> None:
    """Return once a new named actor is created and answers (the GCS is back)."""
    @ray.remote(num_cpus=0)
    class Probe:
        def ping(self) -> str:
            return "pong"

    while True:
        try:
            probe = Probe.options(name=label).remote()
            assert ray.get(probe.ping.remote(), timeout=60) == "pong"
            return
        except Exception:  # noqa: BLE001 - the GCS is not back yet
            time.sleep(0.01)


def _cellfleet_gcs_restart(ray: Any, redis: tuple[subprocess.Popen, int]) -> float:
    from cellfleet import api

    ray.init(num_cpus=1, gcs_storage=f"redis://:{PASSWORD}@127.0.0.1:{redis[1]}")
    try:
        head = api._head
        session = head.session
        port = head.gcs_address.rpartition(":")[2]
        gcs = head.processes[0]
        start = time.perf_counter()
        os.kill(gcs.pid, signal.SIGKILL)
        gcs.wait()
        lifeline = head.lifeline.read_fd
        new = subprocess.Popen(
            [sys.executable, "-m", "cellfleet.gcs", "--session-dir", str(session.path),
             "--port", port, "--cluster-name", session.name, "--lifeline-fd", str(lifeline)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(lifeline,),
            env={**os.environ, "CELLFLEET_GCS_STORAGE":
                 f"redis://:{PASSWORD}@127.0.0.1:{redis[1]}"})
        head.processes[0] = new
        _named_actor_answers(ray, "after-restart")
        return time.perf_counter() - start
    finally:
        ray.shutdown()


def _ray_gcs_restart(ray: Any, redis: tuple[subprocess.Popen, int]) -> float:
    os.environ["RAY_REDIS_ADDRESS"] = f"127.0.0.1:{redis[1]}"
    cluster = importlib.import_module("ray.cluster_utils").Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "redis_password": PASSWORD})
    ray.init(address=cluster.address)
    try:
        head = cluster.head_node
        start = time.perf_counter()
        head.kill_gcs_server()
        head.start_gcs_server()
        _named_actor_answers(ray, "after-restart")
        return time.perf_counter() - start
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.pop("RAY_REDIS_ADDRESS", None)


def spill_and_restore(ray: Any, name: str, scratch: Path) -> tuple[float, float]:
    """GB/s putting five stores' worth of 20 MB objects (all but the last store's worth
    spilled to disk), then reading every one back."""
    import numpy as np

    store = 200 * MB
    spill = scratch / "spill"
    if name == "ray":
        import json

        config = {"type": "filesystem", "params": {"directory_path": str(spill)}}
        ray.init(num_cpus=1, object_store_memory=store,
                 _system_config={"object_spilling_config": json.dumps(config)})
    else:
        os.environ["CELLFLEET_SPILL_DIR"] = str(spill)
        ray.init(num_cpus=1, object_store_memory=store)
    try:
        size = 20 * MB
        count = 5 * store // size
        data = np.ones(size, dtype=np.uint8)
        start = time.perf_counter()
        refs = [ray.put(data) for _ in range(count)]
        put_s = time.perf_counter() - start
        start = time.perf_counter()
        for ref in refs:
            assert ray.get(ref).nbytes == size
        get_s = time.perf_counter() - start
        total = count * size / 1e9
        return total / put_s, total / get_s
    finally:
        ray.shutdown()
        os.environ.pop("CELLFLEET_SPILL_DIR", None)


def _affinity(ray: Any, name: str, node: Any, soft: bool) -> Any:
    strategies = importlib.import_module(f"{name}.util.scheduling_strategies")
    return strategies.NodeAffinitySchedulingStrategy(node.node_id, soft=soft)


SCENARIOS = {
    "node death → retried task running (s)": node_death_to_retry,
    "node death → lost 100 MB object rebuilt (s)": node_death_to_rebuilt_object,
    "node death → actor restarted, answering (s)": node_death_to_restarted_actor,
    "GCS killed → restarted on Redis → new actor answering (s)": gcs_restart_to_first_actor,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ray", action="store_true", help="run on Ray instead of cellfleet")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", help="run only the scenarios whose name contains this")
    args = parser.parse_args()
    name = "ray" if args.ray else "cellfleet"
    ray = importlib.import_module(name)
    with tempfile.TemporaryDirectory() as scratch:
        for label, scenario in SCENARIOS.items():
            if args.only and args.only not in label:
                continue
            times = [scenario(ray, name, Path(scratch)) for _ in range(args.repeats)]
            print(f"{name}: {label}: median {statistics.median(times):.2f}, "
                  f"min {min(times):.2f}, max {max(times):.2f}", flush=True)
        if not args.only or args.only in "spill":
            rates = [spill_and_restore(ray, name, Path(scratch)) for _ in range(args.repeats)]
            print(f"{name}: spill 1 GB through a 200 MB store: "
                  f"{statistics.median(r[0] for r in rates):.2f} GB/s; restore: "
                  f"{statistics.median(r[1] for r in rates):.2f} GB/s", flush=True)


if __name__ == "__main__":
    main()
