"""The raylet's worker pool under faults and load: failed starts, many actors, deep nesting."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import alive, wait_until

import cellfleet
from cellfleet import _context
from cellfleet import _messages as m

pytestmark = pytest.mark.integration

STORE = 64 * 2**20


@cellfleet.remote(num_cpus=0)
class Echo:
    def ping(self, x: int) -> int:
        return x


@cellfleet.remote
def nested(depth: int) -> int:
    """Each level blocks in get() on the next one, so each level holds a worker."""
    if depth == 0:
        return 0
    return cellfleet.get(nested.remote(depth - 1)) + 1


def node_stats() -> dict[str, Any]:
    return _context.core.request("raylet", m.GetNodeStats())


def worker_pids() -> set[int]:
    """The pids of the raylet's workers (its own record)."""
    return {w["pid"] for w in node_stats()["workers"]}


def set_fd_limit(procs: list[psutil.Process], limits: tuple[int, int]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):  # a gone template: the raylet spawns
            proc.rlimit(psutil.RLIMIT_NOFILE, limits)


def test_a_failed_worker_start_does_not_stop_later_starts(fresh_cluster) -> None:
    info = fresh_cluster(num_cpus=0, object_store_memory=STORE)  # no worker is started ahead
    logs = Path(info["session_dir"]) / "logs"
    raylet = psutil.Process(node_stats()["pid"])
    starters = [raylet, *raylet.children()]  # the raylet and the template it forks workers from
    limits = raylet.rlimit(psutil.RLIMIT_NOFILE)
    set_fd_limit(starters, (3, limits[1]))  # every new descriptor: EMFILE
    try:
        first = Echo.remote()  # needs a worker of its own, which cannot start now
        wait_until(lambda: node_stats()["pool"]["failed_starts"] >= 1
                   if "pool" in node_stats() else node_stats()["load"]["queued"] >= 1,
                   timeout=30, message="a worker start to fail")
    finally:
        set_fd_limit(starters, limits)
    assert cellfleet.get(first.ping.remote(1), timeout=60) == 1
    more = [Echo.remote() for _ in range(4)]
    assert cellfleet.get([a.ping.remote(i) for i, a in enumerate(more)], timeout=60) == [0, 1, 2, 3]
    assert node_stats()["pool"]["failed_starts"] >= 1
    assert any("Too many open files" in log.read_text() for log in logs.glob("*.log"))


@pytest.mark.timeout(400)
def test_two_hundred_actors_start_a_few_at_a_time_without_a_failed_start(fresh_cluster) -> None:
    fresh_cluster(num_cpus=2, object_store_memory=STORE)
    concurrency = node_stats()["pool"]["startup_concurrency"]
    actors = [Echo.remote() for _ in range(200)]
    refs = [a.ping.remote(i) for i, a in enumerate(actors)]
    most_starting = 0
    deadline = time.monotonic() + 300
    while (pool := node_stats()["pool"])["registered"] < 200 and time.monotonic() < deadline:
        most_starting = max(most_starting, pool["starting"])
        assert pool["starting"] <= concurrency
        time.sleep(0.05)
    assert cellfleet.get(refs, timeout=60) == list(range(200))
    pool = node_stats()["pool"]
    assert pool["failed_starts"] == 0 and 0 < most_starting <= concurrency


def test_idle_workers_beyond_the_pool_size_are_stopped(fresh_cluster) -> None:
    fresh_cluster(num_cpus=1, object_store_memory=STORE)
    assert cellfleet.get(nested.remote(5), timeout=60) == 5  # six levels, six workers
    started = worker_pids()
    assert len(started) >= 6
    wait_until(lambda: len(worker_pids()) == 1, timeout=30,
               message="idle workers beyond the pool's one to stop")
    wait_until(lambda: alive(started - worker_pids()) == set(), timeout=10,
               message="the stopped workers' processes to exit")
    assert cellfleet.get(nested.remote(1), timeout=60) == 1  # the pool serves on


def test_nesting_deeper_than_the_worker_cap_fails_saying_which_limit_and_how_to_raise_it(
        fresh_cluster, monkeypatch) -> None:
    monkeypatch.setenv("CELLFLEET_MAX_WORKERS", "3")
    fresh_cluster(num_cpus=1, object_store_memory=STORE)
    assert cellfleet.get(nested.remote(2), timeout=60) == 2  # three levels fit
    with pytest.raises(cellfleet.exceptions.RayError) as caught:
        cellfleet.get(nested.remote(6), timeout=60)
    message = str(caught.value)
    assert "limit of 3 task workers" in message and "CELLFLEET_MAX_WORKERS" in message
    assert len(worker_pids()) <= 3
    assert cellfleet.get(nested.remote(1), timeout=60) == 1



def test_workers_start_as_new_interpreters_once_the_template_is_gone(fresh_cluster) -> None:
    fresh_cluster(num_cpus=0, object_store_memory=STORE)
    raylet = psutil.Process(node_stats()["pid"])
    (template,) = [p for p in raylet.children() if "forkserver" in " ".join(p.cmdline())]
    forked = Echo.remote()
    assert cellfleet.get(forked.ping.remote(1), timeout=60) == 1
    assert {w["pid"] for w in node_stats()["workers"]} <= {c.pid for c in template.children()}
    template.kill()
    wait_until(lambda: not psutil.pid_exists(template.pid), timeout=10,  # reaped: noticed
               message="the raylet to notice its template is gone")
    spawned = [Echo.remote() for _ in range(3)]
    assert cellfleet.get([a.ping.remote(i) for i, a in enumerate(spawned)], timeout=60) == [0, 1, 2]
    assert cellfleet.get(forked.ping.remote(2), timeout=60) == 2  # forked workers live on
    assert node_stats()["pool"]["failed_starts"] == 0


def test_the_template_forks_on_request_reports_exits_and_ends_with_the_raylet(tmp_path) -> None:
    ours, theirs = socket.socketpair()
    template = subprocess.Popen(
        [sys.executable, "-m", "cellfleet.raylet.forkserver", "--control-fd",
         str(theirs.fileno()), "--session-dir", str(tmp_path)], pass_fds=(theirs.fileno(),))
    theirs.close()
    try:
        log = tmp_path / "worker.log"
        ours.sendall(json.dumps([str(log), ["--no-such-flag"]]).encode() + b"\n")
        reader = ours.makefile("r")
        ours.settimeout(60)
        kind, pid = reader.readline().split()
        assert kind == "pid"
        assert reader.readline().split() == ["exit", pid, "2"]  # argparse refused the flag
        assert "usage: cellfleet.worker" in log.read_text()  # its output went to its log
        reader.close()
        ours.close()  # as when the raylet exits
        assert template.wait(30) == 0
    finally:
        template.kill()
        template.wait()
