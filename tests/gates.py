"""Gates for tests: a task blocks until the test creates a file, so tests control timing
by conditions instead of sleeps. Pickled by value, so workers need not import the tests."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import cloudpickle

GATE_TIMEOUT_S = 30.0

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def wait_for_file(path: str, timeout: float = GATE_TIMEOUT_S) -> None:
    """Block until ``path`` exists (the test opens the gate by creating it)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} was never opened")
        time.sleep(0.002)


async def wait_for_file_async(path: str, timeout: float = GATE_TIMEOUT_S) -> None:
    """``wait_for_file`` for async actors."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} was never opened")
        await asyncio.sleep(0.002)


def touch(path: str) -> None:
    """Open a gate (or mark that something happened)."""
    with open(path, "a"):
        pass
