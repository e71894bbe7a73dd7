"""Bounded tables with real processes: dead actors are forgotten by owners and the GCS, and
task events buffered while the GCS is down or stalled are capped; ``cellfleet status`` shows
the drops."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from helpers import wait_until
from test_gcs_redis import ask_gcs, restart_gcs, stop

import cellfleet
from cellfleet import _context
from cellfleet import _messages as m
from cellfleet._session import Session
from cellfleet.core.events import MAX_UNSENT_BYTES
from cellfleet.exceptions import ActorDiedError

pytestmark = pytest.mark.integration


@cellfleet.remote
class Counter:
    def inc(self) -> int:
        return 1


@cellfleet.remote
def noop(i: int) -> int:
    return i


def status(address: str, session: Session) -> str:
    done = subprocess.run([sys.executable, "-m", "cellfleet.cli", "status", "--address", address],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CELLFLEET_TOKEN_FILE": str(session.token_file)})
    assert done.returncode == 0, done.stderr
    return done.stdout


def closed_peers(core) -> list[str]:
    """Cached connections whose peer is gone."""

    async def scan() -> list[str]:
        return [address for address, fut in core.peers._connections.items()
                if fut.done() and (fut.exception() or not fut.result().is_open)]

    return core.run(scan(), timeout=5)


def test_dead_actors_are_forgotten_beyond_the_bound(fresh_cluster, monkeypatch) -> None:
    monkeypatch.setenv("CELLFLEET_MAX_DEAD_ACTORS", "3")
    info = fresh_cluster(num_cpus=1, object_store_memory=64 * 2**20)
    core = _context.core
    handles = []
    for _ in range(8):
        actor = Counter.remote()
        assert cellfleet.get(actor.inc.remote(), timeout=60) == 1
        cellfleet.kill(actor)
        with pytest.raises(ActorDiedError):
            cellfleet.get(actor.inc.remote(), timeout=60)
        handles.append(actor)
    assert len(core.actor_submitter.actors) <= 3, "the owner remembers every dead actor"
    wait_until(lambda: not closed_peers(core), timeout=15,
               message="connections to dead actors' workers to be dropped")

    session = Session(Path(info["session_dir"]))
    (stats, actors) = ask_gcs(info["gcs_address"], session.token(), m.GetTableStats(),
                              m.ListActors())
    assert stats["actors"]["dead_forgotten"] == 5
    assert len(actors) == 3
    with pytest.raises(ActorDiedError):  # forgotten everywhere, still dead
        cellfleet.get(handles[0].inc.remote(), timeout=60)
    assert "dead forgotten 5" in status(info["gcs_address"], session)


def test_events_buffered_while_the_gcs_is_down_are_capped(fresh_cluster, monkeypatch) -> None:
    monkeypatch.setenv("CELLFLEET_EVENT_BUFFER_SIZE", "300")
    info = fresh_cluster(num_cpus=1, object_store_memory=64 * 2**20)
    assert cellfleet.get(noop.remote(0), timeout=60) == 0
    session = Session(Path(info["session_dir"]))
    core = _context.core
    os.kill(session.info()["pids"][0], signal.SIGKILL)
    new_gcs = None
    try:
        wait_until(lambda: not core.gcs.is_open, timeout=10, message="the driver to lose the GCS")
        assert cellfleet.get([noop.remote(i) for i in range(400)], timeout=120) == list(range(400))
        assert len(core.events.tasks) <= 300
        dropped = core.events.dropped["task_events"]
        assert dropped >= 1000, core.events.dropped  # 4 events a task in the driver
    finally:
        new_gcs = restart_gcs(session, "memory")
    try:
        address, token = info["gcs_address"], session.token()

        def reported() -> int:
            try:
                (stats,) = ask_gcs(address, token, m.GetTableStats())
            except (OSError, asyncio.TimeoutError, cellfleet.exceptions.RayError):
                return 0
            return stats["dropped_by_workers"].get("task_events", 0)

        wait_until(lambda: reported() >= dropped, timeout=30,
                   message="the driver to report its dropped events to the new GCS")
        line = next(line for line in status(address, session).splitlines()
                    if "dropped by workers" in line)
        assert f"{reported()} task events" in line
    finally:
        cellfleet.shutdown()
        stop(new_gcs)


def unsent_to_gcs(core) -> int:
    async def read() -> int:
        return core.gcs.unsent_bytes

    return core.run(read(), timeout=5)


def test_events_for_a_stalled_gcs_are_held_and_capped(fresh_cluster, monkeypatch) -> None:
    monkeypatch.setenv("CELLFLEET_NODE_TIMEOUT_S", "120")  # the raylet is not what is tested
    info = fresh_cluster(num_cpus=1, object_store_memory=64 * 2**20)
    assert cellfleet.get(noop.remote(0), timeout=60) == 0
    session = Session(Path(info["session_dir"]))
    core = _context.core
    gcs_pid = session.info()["pids"][0]
    os.kill(gcs_pid, signal.SIGSTOP)  # connected, but reading nothing
    try:
        for _ in range(60):  # until the backlog is full and the buffer (10,000 events) too
            assert cellfleet.get([noop.remote(i) for i in range(1000)], timeout=120)[-1] == 999
            assert unsent_to_gcs(core) < MAX_UNSENT_BYTES + 2**20, "a stalled GCS's backlog grew"
            if core.events.dropped["task_events"]:
                break
        assert core.events.dropped["task_events"] > 0, "the events for a stalled GCS piled up"
        assert len(core.events.tasks) <= 10_000
    finally:
        os.kill(gcs_pid, signal.SIGCONT)
    dropped = core.events.dropped["task_events"]

    def reported() -> int:
        (stats,) = ask_gcs(info["gcs_address"], session.token(), m.GetTableStats())
        return stats["dropped_by_workers"].get("task_events", 0)

    wait_until(lambda: reported() >= dropped, timeout=30,
               message="the driver to report what it dropped")


SUBSCRIBER = """
import asyncio, sys
from cellfleet import _messages as m
from cellfleet._rpc import connect
from cellfleet._session import find_token

async def main():
    conn = await connect(sys.argv[1], find_token(sys.argv[1]))
    conn.send(m.Subscribe("logs"))  # every job's lines, as a dashboard asks for them
    await conn.request(m.GetNodes())  # the subscription is in place
    print("subscribed", flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


@cellfleet.remote
def chatty(lines: int) -> int:
    for i in range(lines):
        print(f"{i:06d}" + "x" * 10_000)
    return lines


def test_a_stalled_log_subscriber_does_not_grow_the_gcs(fresh_cluster) -> None:
    info = fresh_cluster(num_cpus=1, object_store_memory=64 * 2**20, log_to_driver=False)
    session = Session(Path(info["session_dir"]))
    gcs = psutil.Process(session.info()["pids"][0])
    reader = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, info["gcs_address"]],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "subscribed"
        reader.send_signal(signal.SIGSTOP)  # subscribed to logs, reading nothing
        before = gcs.memory_info().rss
        for _ in range(80):  # 80 MB of output, 1 MB a task
            assert cellfleet.get(chatty.remote(100), timeout=120) == 100
        (stats,) = ask_gcs(info["gcs_address"], session.token(), m.GetTableStats())
        assert stats["dropped_publications"].get("logs", 0) > 0, stats
        growth = (gcs.memory_info().rss - before) / 2**20
        assert growth < 48, f"the GCS grew by {growth:.0f} MB for a stalled subscriber"
        assert "logs message(s)" in status(info["gcs_address"], session)
    finally:
        reader.send_signal(signal.SIGCONT)
        reader.kill()
        reader.wait(10)
