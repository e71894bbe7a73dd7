"""The GCS with Redis storage: tables live in Redis, and a restarted GCS picks them up.

The Redis server demands a password, as the GCS requires; a server without one, a wrong
password, and records altered in Redis are refused.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from helpers import free_port, runtime_processes, wait_until

import cellfleet
from cellfleet import _context, api
from cellfleet import _messages as m
from cellfleet._rpc import connect
from cellfleet._session import Session, root_dir

pytestmark = pytest.mark.integration

PASSWORD = "correct-horse-battery-staple"


def start_redis(tmp_path: Path, *options: str) -> tuple[subprocess.Popen, int]:
    """A real redis-server on a free loopback port with ``options``; (process, port)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready() -> bool:
        try:
            return redis.Redis(port=port, password=PASSWORD, socket_timeout=0.5).ping()
        except redis.exceptions.AuthenticationError:
            return True  # up (ACL users only, or no password at all)
        except redis.exceptions.ConnectionError:
            return False

    try:
        wait_until(ready, message="redis-server to accept connections")
    except BaseException:
        stop(proc)
        raise
    return proc, port


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[str]:
    """A redis-server that demands a password; its URL carries the password."""
    proc, port = start_redis(tmp_path, "--requirepass", PASSWORD)
    try:
        yield f"redis://:{PASSWORD}@127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture
def open_redis(tmp_path: Path) -> Iterator[str]:
    """A stock redis-server: no password."""
    proc, port = start_redis(tmp_path)
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        stop(proc)


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
    kill_gcs(session)
    return start_gcs(session, storage)


def kill_gcs(session: Session) -> None:
    info = session.info()
    old = api._head.processes[0]
    assert old.pid == info["pids"][0]
    os.kill(info["pids"][0], signal.SIGKILL)
    old.wait(10)


def start_gcs(session: Session, storage: str) -> subprocess.Popen:
    """A GCS on the port of the session's first one, with the same storage."""
    info = session.info()
    port = info["gcs_address"].rpartition(":")[2]
    lifeline = api._head.lifeline.read_fd  # it dies with this process, like the first GCS
    log = open(session.logs / "gcs-restarted.log", "ab")  # noqa: SIM115 - closed below
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "cellfleet.gcs", "--session-dir", str(session.path),
             "--port", port, "--cluster-name", session.name, "--lifeline-fd", str(lifeline)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=(lifeline,),
            env={**os.environ, "CELLFLEET_GCS_STORAGE": storage})
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
        assert client.hget(prefix + "kv", b"tests\0key").endswith(b"value")
        for table in ("nodes", "jobs", "functions", "kv"):
            keys = {k.decode() for k in client.scan_iter(f"cellfleet:*:{table}")}
            assert prefix + table in keys, f"no {table} table in redis: {keys}"
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


class _Payload:
    """A pickle that creates ``path`` when unpickled: what an attacker would plant."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_records_altered_in_redis_are_refused_on_reload(redis_server: str, fresh_cluster,
                                                        tmp_path: Path) -> None:
    info = fresh_cluster(num_cpus=1, object_store_memory=64 * 2**20, gcs_storage=redis_server)
    assert cellfleet.get(add_one.remote(1), timeout=30) == 2
    assert gcs_request(m.KvPut("tests", b"key", b"value", True)) is True
    session = Session(Path(info["session_dir"]))
    prefix = f"cellfleet:{session.name}:"
    marker = tmp_path / "unpickled"
    evil = pickle.dumps(_Payload(marker))
    client = redis.Redis.from_url(redis_server)
    try:
        (function_id,) = client.hkeys(prefix + "functions")
        planted_id = b"\x01" * len(function_id)
        new_gcs = None
        os.kill(session.info()["pids"][0], signal.SIGSTOP)  # no writes while Redis is being altered
        try:
            sealed = client.hget(prefix + "kv", b"tests\0key")
            client.hset(prefix + "kv", b"tests\0key", sealed[:-5] + b"VALUE")  # altered
            client.hset(prefix + "functions", function_id, evil)  # replaced, no MAC
            client.hset(prefix + "functions", planted_id, sealed[:32] + evil)  # stolen MAC
        finally:
            new_gcs = restart_gcs(session, redis_server)
        address, token = info["gcs_address"], session.token()
        kv, planted = wait_until(
            lambda: _try(ask_gcs, address, token, m.KvGet("tests", b"key"),
                         m.GetFunction(planted_id)),
            timeout=15, message="the restarted GCS to answer")
        assert kv is None, "an altered KV record was reloaded"
        assert planted is None, "a record planted in Redis was reloaded"
        log = (session.logs / "gcs-restarted.log").read_text()
        assert log.count("refused record") == 3, log
        # The driver exports its function again; the cluster carries on with the real one.
        assert cellfleet.get(add_one.remote(2), timeout=30) == 3
        (blob,) = ask_gcs(address, token, m.GetFunction(function_id))
        assert blob != evil
        assert not marker.exists(), "a pickle planted in Redis was unpickled"
    finally:
        client.close()
        cellfleet.shutdown()
        stop(new_gcs)


def test_cluster_keys_are_deleted_when_it_ends(redis_server: str, fresh_cluster) -> None:
    info = fresh_cluster(num_cpus=1, object_store_memory=64 * 2**20, gcs_storage=redis_server)
    assert cellfleet.get(add_one.remote(1), timeout=30) == 2
    pattern = f"cellfleet:{Session(Path(info['session_dir'])).name}:*"
    client = redis.Redis.from_url(redis_server)
    try:
        assert list(client.scan_iter(pattern))
        cellfleet.shutdown()  # waits for the GCS to exit
        assert not list(client.scan_iter(pattern)), "the ended cluster left its keys in Redis"
    finally:
        client.close()


def test_redis_without_a_password_is_refused(open_redis: str) -> None:
    with pytest.raises(ConnectionError, match="without a password.*requirepass") as error:
        cellfleet.init(num_cpus=1, gcs_storage=open_redis)
    assert "password_file" in str(error.value)
    assert not cellfleet.is_initialized()
    assert not own_processes(), "a failed init() left processes running"
    client = redis.Redis.from_url(open_redis)
    try:
        assert not list(client.scan_iter("cellfleet:*")), "tables were written to an open Redis"
    finally:
        client.close()


def test_wrong_redis_password_is_refused(redis_server: str) -> None:
    wrong = "redis://:wrong@" + redis_server.rpartition("@")[2]
    with pytest.raises(ConnectionError, match="refused the password"):
        cellfleet.init(num_cpus=1, gcs_storage=wrong)
    with pytest.raises(ConnectionError, match="requires a password"):
        cellfleet.init(num_cpus=1, gcs_storage="redis://" + redis_server.rpartition("@")[2])
    assert not own_processes()


def test_acl_user_with_a_password_file(tmp_path: Path, fresh_cluster) -> None:
    proc, port = start_redis(tmp_path, "--user", "cellfleet", "on", f">{PASSWORD}",
                             "~cellfleet:*", "+@all", "--user", "default", "off")
    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    try:
        fresh_cluster(num_cpus=1, object_store_memory=64 * 2**20,
                      gcs_storage=f"redis://cellfleet@127.0.0.1:{port}?password_file={secret}")
        assert cellfleet.get(add_one.remote(1), timeout=30) == 2
        for p in runtime_processes():
            assert PASSWORD not in " ".join(p.info["cmdline"] or []), "password in a command line"
    finally:
        cellfleet.shutdown()
        stop(proc)


def test_an_actor_that_comes_alive_during_a_gcs_outage_is_alive_after_it(
        redis_server: str, fresh_cluster, tmp_path: Path) -> None:
    """Regression: the owner's ALIVE report went to the closed connection and was lost, so
    the restarted GCS kept the actor PENDING and ``WaitActor`` never answered."""
    from gates import touch, wait_for_file

    info = fresh_cluster(num_cpus=1, object_store_memory=64 * 2**20, gcs_storage=redis_server)
    started, gate = str(tmp_path / "started"), str(tmp_path / "constructed")

    @cellfleet.remote(num_cpus=0)
    class Gated:
        def __init__(self, started: str, gate: str) -> None:
            touch(started)  # its worker is up: it needs no GCS from here on
            wait_for_file(gate)

        def ping(self) -> str:
            return "pong"

    actor = Gated.remote(started, gate)
    wait_for_file(started)
    session = Session(Path(info["session_dir"]))
    kill_gcs(session)
    new_gcs = None
    try:
        wait_until(lambda: not _context.core.gcs.is_open, timeout=10,
                   message="the driver to see the GCS gone")
        touch(gate)
        assert cellfleet.get(actor.ping.remote(), timeout=30) == "pong"  # ALIVE, GCS or not
        new_gcs = start_gcs(session, redis_server)
        wait_until(lambda: _try(ask_gcs, info["gcs_address"], session.token(), m.GetNodes()),
                   timeout=15, message="the restarted GCS to answer")
        (record,) = wait_until(
            lambda: _try(ask_gcs, info["gcs_address"], session.token(),
                         m.WaitActor(actor._actor_id)),
            timeout=15, message="the restarted GCS to answer WaitActor")
        assert record["state"] == "ALIVE"

        @cellfleet.remote
        def call(handle) -> str:  # a process that must look the actor up in the GCS
            return cellfleet.get(handle.ping.remote())

        assert cellfleet.get(call.remote(actor), timeout=30) == "pong"
    finally:
        cellfleet.shutdown()
        stop(new_gcs)
