"""The GCS with Redis storage: tables live in Redis, and a restarted GCS picks them up."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis
from helpers import runtime_processes, wait_until

import cellfleet
from cellfleet import _context, api
from cellfleet import _messages as m
from cellfleet._rpc import connect
from cellfleet._session import Session, root_dir

pytestmark = pytest.mark.integration


@cellfleet.remote
def add_one(x: int) -> int:
    return x + 1


def gcs_request(message: m.Message) -> object:
    """A request over the driver's own GCS connection."""
    core = _context.core

    async def call() -> object:
        return await core.gcs.request(message)

    return core.run(call(), timeout=10)


def ask_gcs(address: str, token: bytes, *messages: m.Message) -> list:
    """Requests over a new connection from this thread."""

    async def call() -> list:
        conn = await connect(address, token, timeout=5)
        try:
            return [await asyncio.wait_for(conn.request(msg), 5) for msg in messages]
        finally:
            conn.close()

    return asyncio.run(call())


def _try(fn, *args):
    """``fn(*args)``, or None while the GCS is not reachable yet (for wait_until)."""
    try:
        return fn(*args)
    except (OSError, asyncio.TimeoutError, cellfleet.exceptions.RayError):
        return None


def own_processes() -> list[psutil.Process]:
    root = str(root_dir())
    return [p for p in runtime_processes() if root in " ".join(p.info["cmdline"] or [])]


def restart_gcs(session: Session, storage: str) -> subprocess.Popen:
    """SIGKILL the session's GCS; start a new one on the same port with the same storage."""
    info = session.info()
    old = api._head.processes[0]
    assert old.pid == info["pids"][0]
    os.kill(info["pids"][0], signal.SIGKILL)
    old.wait(10)
    port = info["gcs_address"].rpartition(":")[2]
    lifeline = api._head.lifeline.read_fd  # it dies with this process, like the first GCS
    log = open(session.logs / "gcs-restarted.log", "ab")  # noqa: SIM115 - closed below
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "cellfleet.gcs", "--session-dir", str(session.path),
             "--port", port, "--storage", storage, "--cluster-name", session.name,
             "--lifeline-fd", str(lifeline)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=(lifeline,))
    finally:
        log.close()


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_gcs_tables_in_redis_survive_a_gcs_restart(redis_server: str, fresh_cluster) -> None:
    info = fresh_cluster(num_cpus=2, object_store_memory=64 * 2**20, gcs_storage=redis_server)
    assert cellfleet.get(add_one.remote(1), timeout=30) == 2
    assert gcs_request(m.KvPut("tests", b"key", b"value", True)) is True
    session = Session(Path(info["session_dir"]))
    token = session.token()
    job_id = info["job_id"]
    node_id = bytes.fromhex(info["node_id"])

    client = redis.Redis.from_url(redis_server)
    try:
        prefix = f"cellfleet:{session.name}:"
        for table in ("nodes", "jobs", "functions", "kv"):
            keys = {k.decode() for k in client.scan_iter(f"cellfleet:*:{table}")}
            assert prefix + table in keys, f"no {table} table in redis: {keys}"
        assert client.hget(prefix + "kv", b"tests\0key") == b"value"
        assert client.hexists(prefix + "nodes", node_id)
        assert client.hexists(prefix + "jobs", str(job_id))
        function_ids = client.hkeys(prefix + "functions")
        assert function_ids, "the task's function was not exported to redis"
    finally:
        client.close()

    restarted_at = time.time()
    new_gcs = restart_gcs(session, redis_server)
    try:
        address = info["gcs_address"]
        jobs, kv, blob = wait_until(
            lambda: _try(ask_gcs, address, token, m.ListJobs(), m.KvGet("tests", b"key"),
                         m.GetFunction(function_ids[0])),
            timeout=15, message="the restarted GCS to answer")
        assert job_id in [job["job_id"] for job in jobs]
        assert kv == b"value"
        assert blob, "the restarted GCS lost the exported function"

        def node_reregistered() -> bool:
            (nodes,) = ask_gcs(address, token, m.GetNodes())
            return any(n["node_id"] == node_id and n["alive"]
                       and n["start_time"] >= restarted_at for n in nodes)

        wait_until(node_reregistered, timeout=15, message="the raylet to re-register")
        assert new_gcs.poll() is None

        @cellfleet.remote
        def double(x: int) -> int:
            return 2 * x

        assert cellfleet.get([add_one.remote(2), double.remote(21)], timeout=30) == [3, 42]
    finally:
        cellfleet.shutdown()
        stop(new_gcs)


def test_driver_talks_to_a_restarted_gcs(redis_server: str, fresh_cluster) -> None:
    info = fresh_cluster(num_cpus=1, object_store_memory=64 * 2**20, gcs_storage=redis_server)
    session = Session(Path(info["session_dir"]))
    new_gcs = restart_gcs(session, redis_server)
    try:
        wait_until(lambda: _try(ask_gcs, info["gcs_address"], session.token(), m.GetNodes()),
                   timeout=15, message="the restarted GCS to answer")
        wait_until(lambda: _try(gcs_request, m.KvPut("tests", b"after", b"restart", True)),
                   timeout=5, message="the driver's GCS requests to work again")
    finally:
        cellfleet.shutdown()
        stop(new_gcs)


def test_unreachable_redis_fails_init_and_leaves_nothing() -> None:
    with pytest.raises(Exception):  # noqa: B017 - the message is checked below
        cellfleet.init(num_cpus=1, gcs_storage="redis://127.0.0.1:1")
    assert not cellfleet.is_initialized()
    assert not own_processes(), "a failed init() left processes running"


def test_unreachable_redis_error_says_why() -> None:
    with pytest.raises(Exception, match="(?i)redis"):
        cellfleet.init(num_cpus=1, gcs_storage="redis://127.0.0.1:1")
