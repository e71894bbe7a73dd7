"""Shared fixtures: a real local cluster, a real redis-server, and a check for leftovers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator

import pytest
from helpers import free_port, runtime_processes, wait_until

import cellfleet

# Sessions started by the tests live in a directory of their own.
os.environ["CELLFLEET_TMPDIR"] = tempfile.mkdtemp(prefix="cellfleet-tests-")
# ... and the clusters they announce to Jupyter (kernel connection files too) in another.
os.environ["JUPYTER_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="cellfleet-tests-jupyter-")






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
