"""Shared fixtures: a real local cluster, a real redis-server, and a check for leftovers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

import cellfleet

RUNTIME_MODULES = ("cellfleet.gcs", "cellfleet.raylet", "cellfleet.worker")

# Sessions started by the tests live in a directory of their own.
os.environ["CELLFLEET_TMPDIR"] = tempfile.mkdtemp(prefix="cellfleet-tests-")


def runtime_processes() -> list[psutil.Process]:
    """Every cellfleet runtime process (GCS, raylets, workers) of this test run's sessions."""
    root = os.environ["CELLFLEET_TMPDIR"]
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if root in cmdline and any(f"-m {module}" in cmdline for module in RUNTIME_MODULES):
            found.append(proc)
    return found


def wait_until(predicate: Callable[[], object], timeout: float = 10.0,
               interval: float = 0.02, message: str = "condition") -> object:
    """Poll ``predicate`` until it is truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture(autouse=True, scope="module")
def no_leftover_processes() -> Iterator[None]:
    """After each test module, no runtime process may remain."""
    yield
    if cellfleet.is_initialized():
        cellfleet.shutdown()
    wait_until(lambda: not runtime_processes(), timeout=15,
               message="runtime processes to exit")


@pytest.fixture(scope="module")
def cluster() -> Iterator[cellfleet.api.RuntimeInfo]:
    """A local cluster with 2 CPUs shared by the tests of one module."""
    info = cellfleet.init(num_cpus=2, object_store_memory=256 * 2**20, log_to_driver=True)
    yield info
    cellfleet.shutdown()


@pytest.fixture
def fresh_cluster() -> Iterator[Callable[..., cellfleet.api.RuntimeInfo]]:
    """Start a cluster with custom options inside a test; shut down after it."""

    def start(**options: object) -> cellfleet.api.RuntimeInfo:
        options.setdefault("num_cpus", 2)
        return cellfleet.init(**options)

    yield start
    cellfleet.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_server(tmp_path) -> Iterator[str]:
    """A real redis-server on a free loopback port; yields its redis:// URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def ready() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    try:
        wait_until(ready, message="redis-server to accept connections")
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(5)
