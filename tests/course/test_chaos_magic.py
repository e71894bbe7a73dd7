"""``%chaos`` in a real cellfleet kernel: each fault against a cluster the kernel started
(four nodes of ``cluster_utils.Cluster``; a Redis-backed runtime for restart-gcs), the seed
naming the victim in advance, and refusal to touch a cluster the kernel connected to."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import Iterator

import psutil
import pytest
from course_kernel import LiveKernel, start_kernel
from helpers import alive, free_port, wait_until

pytestmark = pytest.mark.integration

SETUP = """
import time
import cellfleet as ray
from cellfleet.cluster_utils import Cluster
from cellfleet.kernel.chaos import ChaosRunner, parse_chaos_line
from cellfleet.util.state import list_actors, list_tasks


def wait_for(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


%cluster stop
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
for _ in range(3):
    cluster.add_node(num_cpus=1)
%cluster connect {cluster.address}
"""
HIT = re.compile(r"chaos: (\S+) hit (.+?) at \d\d:\d\d:\d\d\. Lost: ")


@pytest.fixture(scope="module")
def kernel(cellfleet_kernelspec) -> Iterator[LiveKernel]:
    """A kernel connected to four nodes it started (head + 3, one CPU each)."""
    with start_kernel() as k:
        k.ok(SETUP)
        yield k
        k.run("%cluster stop\ncluster.shutdown()")


def hit(text: str) -> tuple[str, str]:
    match = HIT.search(text)
    assert match, f"no announcement in {text!r}"
    return match.group(1), match.group(2)


def pids_of(k: LiveKernel, ip: str) -> list[int]:
    return [int(p) for p in re.findall(r"\d+", k.ok(
        f"print([n.pids for n in ChaosRunner().snapshot().nodes if n.ip == {ip!r}][0])"))]


def test_kill_worker_kills_a_running_tasks_worker_and_the_task_is_retried(kernel) -> None:
    kernel.ok("""
@ray.remote(max_retries=2)
def slow(i):
    time.sleep(1.0)
    return i

refs = [slow.remote(i) for i in range(2)]
wait_for(lambda: [t for t in list_tasks() if t.get("name") == "slow"
                  and t["state"] == "RUNNING" and t.get("worker_pid")])
""")
    action, victim = hit(kernel.ok("%chaos kill-worker --seed 4"))
    assert action == "kill-worker"
    pid = int(re.search(r"worker pid (\d+)", victim).group(1))
    assert not alive({pid}), "the announced worker still runs"
    out = kernel.ok("""
print(ray.get(refs, timeout=60))
print(sorted(t.get("attempt_number", 0) for t in list_tasks() if t.get("name") == "slow"))
fault = wait_for(lambda: [t for t in list_tasks() if t.get("type") == "FAULT"])[-1]
print(fault["name"], fault["worker_pid"], fault["start_time"] <= fault["end_time"])
""")
    assert "[0, 1]" in out and "[0, 1]\n[0, 1]" in out, out  # values, then attempts 0 and 1
    assert f"chaos kill-worker {pid} True" in out


def test_the_seed_names_the_victim_before_the_fault_and_kill_node_kills_it(kernel) -> None:
    out = kernel.ok("""
runner = ChaosRunner()
snap = runner.snapshot()
cmd = parse_chaos_line("kill-node")
same = {runner.planner.plan(cmd, snap, 21).victim for _ in range(5)}
spread = {runner.planner.plan(cmd, snap, seed).victim for seed in range(30)}
print(len(same), len(spread), next(iter(same)))
""")
    same, spread, predicted = out.split(maxsplit=2)
    assert same == "1" and int(spread) > 1, out
    predicted = predicted.strip()
    ip = predicted.split()[1]
    raylet_and_workers = pids_of(kernel, ip)
    action, victim = hit(kernel.ok("%chaos kill-node --seed 21"))
    assert (action, victim) == ("kill-node", predicted)
    assert not alive(set(raylet_and_workers)), "a process of the killed node still runs"
    out = kernel.ok(f"""
print([n["Alive"] for n in ray.nodes() if n["NodeManagerAddress"] == {ip!r}])
print(ray.get([ray.remote(lambda: 7).remote() for _ in range(3)], timeout=60))
""")
    assert out.split("\n")[:2] == ["[False]", "[7, 7, 7]"], out


def test_kill_actor_kills_its_process_and_it_restarts(kernel) -> None:
    before = int(kernel.ok("""
@ray.remote(max_restarts=1)
class Victim:
    def pid(self):
        import os
        return os.getpid()

victim = Victim.options(name="victim").remote()
print(ray.get(victim.pid.remote()))
"""))
    action, who = hit(kernel.ok("%chaos kill-actor victim"))
    assert action == "kill-actor" and f"pid {before}" in who
    assert not alive({before})
    out = kernel.ok("""
print(ray.get(victim.pid.remote(), timeout=60))
print([a["num_restarts"] for a in list_actors() if a["name"] == "victim"])
""")
    after, restarts = out.split("\n")[:2]
    assert int(after) != before and restarts == "[1]"


def test_slow_node_freezes_a_nodes_processes_then_lets_them_go_on(kernel) -> None:
    ip = kernel.ok("print(sorted(n.ip for n in ChaosRunner().snapshot().nodes "
                   "if n.alive and not n.head)[0])").strip()
    pids = pids_of(kernel, ip)
    action, victim = hit(kernel.ok(f"%chaos slow-node {ip} 1500"))
    assert action == "slow-node" and ip in victim
    statuses = {psutil.Process(p).status() for p in pids}
    assert statuses == {psutil.STATUS_STOPPED}, statuses
    wait_until(lambda: all(psutil.Process(p).status() != psutil.STATUS_STOPPED for p in pids),
               timeout=10, message="the frozen node's processes to go on")
    out = kernel.ok(f"print([n['Alive'] for n in ray.nodes() if n['NodeManagerAddress'] == "
                    f"{ip!r}])")
    assert out.strip() == "[True]", "a node frozen for 1.5 s was declared dead"


def test_restart_gcs_is_refused_when_the_tables_are_in_memory(kernel) -> None:
    _, error = kernel.run("%chaos restart-gcs")
    assert error is not None and error["ename"] == "ChaosRefused"
    assert "in memory" in error["evalue"] and "gcs_storage" in error["evalue"]


def test_restart_gcs_with_redis_storage_and_the_work_goes_on(kernel, tmp_path) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    port = free_port()
    redis = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(tmp_path), "--requirepass", "chaos-test"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0,
                   message="redis-server to listen")
        out = kernel.ok(f"""
%cluster stop
cluster.shutdown()
info = ray.init(num_cpus=1, gcs_storage="redis://:chaos-test@127.0.0.1:{port}")
import json, os
print(json.load(open(os.path.join(info["session_dir"], "cluster.json")))["pids"][0])
""")
        old_gcs = int(out.strip().split("\n")[-1])
        action, victim = hit(kernel.ok("%chaos restart-gcs"))
        assert action == "restart-gcs" and f"pid {old_gcs}" in victim
        assert not alive({old_gcs})
        new_gcs = [p for p in psutil.Process(kernel_pid(kernel)).children(recursive=True)
                   if "cellfleet.gcs" in " ".join(p.cmdline())]
        assert len(new_gcs) == 1 and new_gcs[0].pid != old_gcs
        assert kernel.ok("print(ray.get(ray.remote(lambda: 'ran').remote(), timeout=60))"
                         ).strip() == "ran"
        kernel.ok("ray.shutdown()")
        wait_until(lambda: not alive({new_gcs[0].pid}), message="the new GCS to stop")
    finally:
        redis.terminate()
        redis.wait(10)
    kernel.ok("cluster = Cluster()")  # nothing left for the module's teardown to stop


def kernel_pid(k: LiveKernel) -> int:
    return int(k.ok("import os\nprint(os.getpid())").strip())


def test_a_cluster_the_kernel_connected_to_is_left_alone(cellfleet_kernelspec) -> None:
    from cellfleet.node import start_head

    head = start_head(num_cpus=1, object_store_memory=64 * 2**20)
    try:
        env = {"CELLFLEET_ADDRESS": head.gcs_address,
               "CELLFLEET_TOKEN_FILE": str(head.session.token_file)}
        with start_kernel(env) as k:
            assert "connected" in k.ok("%cluster")
            for line in ("kill-node", "kill-worker", "restart-gcs", "slow-node 127.0.0.1 10"):
                _, error = k.run(f"%chaos {line}")
                assert error is not None and error["ename"] == "ChaosRefused", line
                assert "not started by this kernel" in error["evalue"], error
            assert all(p.poll() is None for p in head.processes)
    finally:
        head.stop()
