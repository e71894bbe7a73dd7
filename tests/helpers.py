"""Helpers the tests share: waiting on conditions, finding runtime processes, free ports."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import psutil

RUNTIME_MODULES = ("cellfleet.gcs", "cellfleet.raylet", "cellfleet.worker")


def runtime_processes() -> list[psutil.Process]:
    """Every cellfleet runtime process (GCS, raylets, workers) of this test run's sessions."""
    root = os.environ["CELLFLEET_TMPDIR"]
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if root in cmdline and any(f"-m {module}" in cmdline for module in RUNTIME_MODULES):
            found.append(proc)
    return found


def alive(pids: set[int]) -> set[int]:
    """The pids of ``pids`` whose processes still run (zombies count as gone)."""
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.NoSuchProcess:
            pass
    return out


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
