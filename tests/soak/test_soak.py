"""Soak: a steady mixed workload must leave every process's memory flat.

Tasks, actors created and killed, puts and gets run for ``CELLFLEET_SOAK_S`` seconds (75 by
default; set it to 600 or more by hand). After a warm-up, the resident memory of every process
that lives through the run (GCS, raylet, pooled workers, this driver) must stay within
``GROWTH_LIMIT_MB``: a table that grows with the work done shows up as a slope, as the
GCS's 28 -> 284 MB over five minutes once did. The bounded tables are set small here so that
they fill up during the warm-up and the steady state is what gets measured.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import psutil
import pytest
from helpers import runtime_processes

import cellfleet
from cellfleet import _context
from cellfleet import _messages as m
from cellfleet._session import Session

pytestmark = pytest.mark.integration

SOAK_S = float(os.environ.get("CELLFLEET_SOAK_S", "75"))
WARMUP_S = max(20.0, SOAK_S / 3)
GROWTH_LIMIT_MB = 12.0
SAMPLE_EVERY_S = 1.0
TASKS_PER_ROUND = 200
SMALL_BOUNDS = {
    "CELLFLEET_MAX_TASK_EVENTS": "2000",  # GCS task records
    "CELLFLEET_MAX_DEAD_ACTORS": "20",  # GCS and owners
    "CELLFLEET_EVENT_BUFFER_SIZE": "2000",  # per core worker, while the GCS is away
}


@cellfleet.remote
def add(x: int, y: int) -> int:
    return x + y


@cellfleet.remote
def blob(size: int) -> bytes:
    return bytes(size)


@cellfleet.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def inc(self, by: int) -> int:
        self.n += by
        return self.n


def one_round(i: int) -> None:
    """A little of everything; checks its results so that a broken runtime fails the soak.
    Starting an actor costs a process, so one is created and killed every fifth round."""
    refs = [add.remote(i, k) for k in range(TASKS_PER_ROUND)]
    assert cellfleet.get(refs, timeout=60) == [i + k for k in range(TASKS_PER_ROUND)]
    if i % 5 == 0:
        counter = Counter.remote()
        assert cellfleet.get([counter.inc.remote(1) for _ in range(5)], timeout=60) == [
            1, 2, 3, 4, 5]
        cellfleet.kill(counter)
    small = [cellfleet.put(small_value(i)) for _ in range(10)]
    large = cellfleet.put(bytes(2 * 2**20))  # in the shared-memory store
    assert len(cellfleet.get(large, timeout=60)) == 2 * 2**20
    assert cellfleet.get(small, timeout=60) == [small_value(i)] * 10
    assert len(cellfleet.get(blob.remote(300_000), timeout=60)) == 300_000
    assert cellfleet.get(add.remote(small[0], b""), timeout=60) == small_value(i)


def small_value(i: int) -> bytes:
    return i.to_bytes(8, "big") * 1000


def rss_by_process(session: Session) -> dict[int, tuple[str, int]]:
    """pid -> (role, resident bytes) for this driver and every runtime process: the GCS, the
    raylet, the workers it reports, and any other helper (a worker template) by module name."""
    gcs, raylet = session.info()["pids"][:2]
    stats = _context.core.request("raylet", m.GetNodeStats(), timeout=30)
    roles = {gcs: "gcs", raylet: "raylet", os.getpid(): "driver"}
    roles.update({worker["pid"]: "worker" for worker in stats["workers"]})
    procs = {proc.pid: proc for proc in runtime_processes()}
    procs[os.getpid()] = psutil.Process()
    out = {}
    for pid, proc in procs.items():
        try:
            cmdline = proc.cmdline()
            module = next((a for a in cmdline if a.startswith("cellfleet.")), "?")
            out[pid] = (roles.get(pid, module), proc.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
    return out


def test_memory_stays_flat_under_a_steady_mixed_workload(fresh_cluster, monkeypatch) -> None:
    for name, value in SMALL_BOUNDS.items():
        monkeypatch.setenv(name, value)
    info = fresh_cluster(num_cpus=2, object_store_memory=128 * 2**20)
    session = Session(Path(info["session_dir"]))
    ticks: list[tuple[float, dict[int, tuple[str, int]]]] = []  # (time, pid -> (role, rss))
    start = last_sample = time.monotonic()
    rounds = 0
    while time.monotonic() - start < SOAK_S:
        one_round(rounds)
        rounds += 1
        now = time.monotonic()
        if now - last_sample >= SAMPLE_EVERY_S:
            last_sample = now
            ticks.append((now - start, rss_by_process(session)))
    measured = [sample for t, sample in ticks if t >= WARMUP_S]
    assert rounds > 10 and len(measured) >= 6, f"{rounds} rounds, {len(measured)} samples"

    # Per role, the largest process at each sample: a process that lives through the run
    # (driver, GCS, raylet, a pooled worker) shows its own growth; workers that come and go
    # are new processes and must not get larger either. The count of processes stays put.
    report, grown = [], []
    required = {"driver", "gcs", "raylet", "worker"}  # and helpers such as a worker template
    for role in sorted(required | {r for sample in measured for r, _ in sample.values()}):
        largest = [max((rss for r, rss in sample.values() if r == role), default=0) / 2**20
                   for sample in measured]
        counts = [sum(r == role for r, _ in sample.values()) for sample in measured]
        first, last = statistics.median(largest[:3]), statistics.median(largest[-3:])
        if role not in required and not all(largest):
            continue  # a helper that came or went during the run (a worker starting up)
        report.append(f"{role}: {first:.1f} -> {last:.1f} MB, {counts[0]} -> {counts[-1]} "
                      f"process(es)")
        assert first > 0, f"no {role} process measured: {report}"
        if last - first > GROWTH_LIMIT_MB or counts[-1] > max(counts[:3]) + 2:
            grown.append(report[-1])
    print(f"{rounds} rounds in {SOAK_S:.0f}s; " + "; ".join(report))
    assert not grown, (f"memory grew by more than {GROWTH_LIMIT_MB} MB (or processes piled up) "
                       f"after the warm-up, {rounds} rounds: {grown}; all: {report}")
