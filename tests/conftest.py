"""Shared fixtures: a real local cluster and a check for leftovers."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

import pytest
from helpers import runtime_processes, wait_until

import cellfleet

# Sessions started by the tests live in a directory of their own.
os.environ["CELLFLEET_TMPDIR"] = tempfile.mkdtemp(prefix="cellfleet-tests-")
# ... and the clusters they announce to Jupyter (kernel connection files too) in another.
os.environ["JUPYTER_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="cellfleet-tests-jupyter-")
_RUN_DIRS = (os.environ["CELLFLEET_TMPDIR"], os.environ["JUPYTER_RUNTIME_DIR"])


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove this run's folders once every test and fixture is done."""
    if cellfleet.is_initialized():
        cellfleet.shutdown()
    for path in _RUN_DIRS:
        shutil.rmtree(path, ignore_errors=True)






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
