"""The raylet's worker pool under faults and load: failed starts, many actors, deep nesting."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import wait_until

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


def worker_processes() -> list[psutil.Process]:
    """The raylet's live worker processes."""
    raylet = psutil.Process(node_stats()["pid"])
    return [p for p in raylet.children() if p.status() != psutil.STATUS_ZOMBIE]


def test_a_failed_worker_start_does_not_stop_later_starts(fresh_cluster) -> None:
    info = fresh_cluster(num_cpus=1, object_store_memory=STORE)
    log = Path(info["session_dir"]) / "logs" / "raylet.log"
    assert cellfleet.get(nested.remote(0), timeout=60) == 0
    raylet = psutil.Process(node_stats()["pid"])
    limits = raylet.rlimit(psutil.RLIMIT_NOFILE)
    raylet.rlimit(psutil.RLIMIT_NOFILE, (3, limits[1]))  # every new descriptor: EMFILE
    try:
        first = Echo.remote()  # needs a worker of its own, which cannot start now
        wait_until(lambda: node_stats()["load"]["queued"] >= 1, timeout=30,
                   message="the actor's lease request to reach the raylet")
    finally:
        raylet.rlimit(psutil.RLIMIT_NOFILE, limits)
    assert cellfleet.get(first.ping.remote(1), timeout=60) == 1
    second = Echo.remote()
    assert cellfleet.get(second.ping.remote(2), timeout=60) == 2
    assert cellfleet.get([nested.remote(0) for _ in range(4)], timeout=60) == [0] * 4
    assert node_stats()["pool"]["failed_starts"] >= 1
    assert "Too many open files" in log.read_text()


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
    wait_until(lambda: len(worker_processes()) == 1, timeout=30,
               message="idle workers beyond the pool's one to stop")
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
    assert len(worker_processes()) <= 3
    assert cellfleet.get(nested.remote(1), timeout=60) == 1

