"""The ``cellfleet`` command: start a detached head, inspect it, connect to it, stop it."""

from __future__ import annotations

import secrets
import select
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from helpers import free_port, runtime_processes, wait_until

import cellfleet
from cellfleet._session import Session, find_token, root_dir

pytestmark = pytest.mark.integration


@cellfleet.remote
def add_one(x: int) -> int:
    return x + 1


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -m cellfleet.cli ARGS`` in a child process (sharing the session root)."""
    return subprocess.run([sys.executable, "-m", "cellfleet.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def own_processes() -> list[psutil.Process]:
    """Runtime processes of this test run's sessions (other clusters may share the machine)."""
    root = str(root_dir())
    return [p for p in runtime_processes() if root in " ".join(p.info["cmdline"] or [])]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def announced(address: str) -> bool:
    """Whether a cluster entry for ``address`` is in Jupyter's runtime directory."""
    from cellfleet.extension.discovery import registry_dir

    return any(address in p.read_text() for p in registry_dir().glob("cellfleet-cluster-*"))


def test_start_status_connect_stop() -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    try:
        started = cli("start", "--head", "--port", str(port), "--num-cpus", "2",
                      "--object-store-memory", str(128 * 2**20), "--resources", '{"custom": 3}')
        assert started.returncode == 0, started.stderr
        assert address in started.stdout
        assert 'init(address="auto")' in started.stdout and "cellfleet stop" in started.stdout
        session = Session.current()
        assert session is not None, "start --head did not mark the current cluster"
        info = session.info()
        assert info["gcs_address"] == address and info["detached"] is True
        assert f"CELLFLEET_TOKEN=$(cat {session.token_file})" in started.stdout
        assert all(alive(pid) for pid in info["pids"])
        assert announced(address), "start --head did not register the cluster for Jupyter"

        status = cli("status")
        assert status.returncode == 0, status.stderr
        assert info["node_id"] in status.stdout and "alive" in status.stdout
        assert "custom" in status.stdout and "object store" in status.stdout

        runtime = cellfleet.init(address="auto")
        assert runtime["gcs_address"] == address
        assert cellfleet.get(add_one.remote(1), timeout=30) == 2
        cellfleet.shutdown()
        assert all(alive(pid) for pid in info["pids"]), "shutdown() stopped a detached cluster"

        with pytest.MonkeyPatch.context() as env:
            env.setenv("CELLFLEET_TOKEN", "0" * 64)
            with pytest.raises(cellfleet.exceptions.AuthenticationError):
                cellfleet.init(address=address)
        assert not cellfleet.is_initialized()
        cellfleet.init(address=address)
        assert cellfleet.get(add_one.remote(2), timeout=30) == 3
        cellfleet.shutdown()
        assert all(alive(pid) for pid in info["pids"])

        status = cli("status", "--address", address)
        assert status.returncode == 0, status.stderr
        assert "2 job(s)" in status.stdout

        stopped = cli("stop")
        assert stopped.returncode == 0, stopped.stderr
        assert address in stopped.stdout
        assert not [p.pid for p in own_processes() if alive(p.pid)]
        assert Session.current() is None
        assert not announced(address)
        assert cli("status").returncode == 1
    finally:
        if cellfleet.is_initialized():
            cellfleet.shutdown()
        cli("stop", "--all")


def test_start_on_a_busy_port_fails_cleanly() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        before = {p.pid for p in own_processes()}
        result = cli("start", "--head", "--port", str(port))
    assert result.returncode == 2
    assert f"127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert {p.pid for p in own_processes()} <= before
    assert Session.current() is None


@pytest.mark.parametrize("args, message", [
    (["--resources", "{not json"], "not valid JSON"),
    (["--resources", '{"CPU": 4}'], "num_cpus"),
    (["--num-cpus", "-1"], "num_cpus"),
    (["--gcs-storage", "nonsense://x"], "not understood"),
    (["--host", "0.0.0.0"], "not an address other nodes can reach"),
])
def test_start_with_bad_options_fails_cleanly(args: list[str], message: str) -> None:
    result = cli("start", "--head", "--port", str(free_port()), *args)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not own_processes()
    assert Session.current() is None


def test_joining_a_head_that_is_not_there_fails_cleanly() -> None:
    result = cli("start", "--address", f"127.0.0.1:{free_port()}", timeout=20)
    assert result.returncode == 1
    assert "nothing answers" in result.stderr and "Traceback" not in result.stderr
    assert not own_processes()


def test_init_auto_without_a_cluster() -> None:
    assert Session.current() is None
    with pytest.raises(ConnectionError, match="cellfleet start --head"):
        cellfleet.init(address="auto")
    assert not cellfleet.is_initialized()


def test_status_and_stop_without_a_cluster() -> None:
    status = cli("status")
    assert status.returncode == 1
    assert "no running cellfleet cluster" in status.stderr
    assert "Traceback" not in status.stderr
    stop = cli("stop")
    assert stop.returncode == 0 and "No running cellfleet cluster" in stop.stdout


def test_stop_all_stops_every_session() -> None:
    ports = [free_port(), free_port()]
    try:
        for port in ports:
            result = cli("start", "--head", "--port", str(port), "--num-cpus", "0")
            assert result.returncode == 0, result.stderr
        wait_until(lambda: len(own_processes()) >= 4, message="two heads")
        stopped = cli("stop", "--all")
        assert stopped.returncode == 0, stopped.stderr
        for port in ports:
            assert f"127.0.0.1:{port}" in stopped.stdout
        assert not [p.pid for p in own_processes() if alive(p.pid)]
    finally:
        cli("stop", "--all")


HOG = textwrap.dedent("""
    import threading
    import cellfleet

    @cellfleet.remote
    def hog():
        threading.Event().wait()

    cellfleet.init(address="auto")
    ref = hog.remote()
    cellfleet.wait([ref], timeout=0.5)
    print("READY", flush=True)
    threading.Event().wait()
""")


def test_killed_driver_frees_the_shared_cluster() -> None:
    """A driver SIGKILLed mid-task: its job ends, and its worker and CPU go back to others."""
    port = free_port()
    try:
        assert cli("start", "--head", "--port", str(port), "--num-cpus", "1").returncode == 0
        driver = subprocess.Popen([sys.executable, "-c", HOG], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            ready, _, _ = select.select([driver.stdout], [], [], 60)
            assert ready and driver.stdout.readline().startswith("READY"), driver.stderr
        finally:
            driver.kill()
            driver.wait()
        cellfleet.init(address="auto")
        assert cellfleet.get(add_one.remote(1), timeout=30) == 2  # the only CPU is free again
        status = cli("status")
        assert f"RUNNING   pid {driver.pid}" not in status.stdout
        assert f"FINISHED  pid {driver.pid}" in status.stdout
    finally:
        if cellfleet.is_initialized():
            cellfleet.shutdown()
        cli("stop", "--all")


def _stale_session(address: str) -> Path:
    """What an earlier cluster on ``address`` leaves on disk once stopped (or crashed)."""
    path = root_dir() / f"session_2000-01-01_00-00-00_1_{secrets.token_hex(3)}"
    (path / "logs").mkdir(parents=True)
    (path / "token").write_text(secrets.token_hex(32))
    (path / "token").chmod(0o600)
    Session(path).write_info(gcs_address=address, raylet_address="127.0.0.1:1",
                             node_id="00" * 16, pids=[], started=946684800.0, detached=True,
                             gcs_storage=None)
    return path


def test_connect_after_restarting_on_the_same_port() -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    stale: list[Path] = []
    try:
        assert cli("start", "--head", "--port", str(port), "--num-cpus", "1").returncode == 0
        live = Session.current()
        stale = [_stale_session(address) for _ in range(8)]  # same address, dead, other tokens
        assert find_token(address) == live.token()
        Session.clear_current(live.path)  # without the marker too: only running sessions count
        assert find_token(address) == live.token()
        live.mark_current()
        status = cli("status")
        assert status.returncode == 0, status.stderr
        cellfleet.init(address="auto")
        assert cellfleet.get(add_one.remote(1), timeout=30) == 2
    finally:
        if cellfleet.is_initialized():
            cellfleet.shutdown()
        cli("stop", "--all")
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
