"""Helpers the tests share: waiting on conditions, finding runtime processes, free ports."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

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


CHROMIUM = os.environ.get("CELLFLEET_CHROMIUM", "/usr/bin/chromium")


@contextlib.asynccontextmanager
async def chromium_page(errors: list[str]) -> AsyncIterator[Any]:
    """A page of headless Chromium (playwright); JavaScript errors and console errors land in
    ``errors``."""
    from playwright import async_api

    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                           args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.on("console", lambda msg: errors.append(f"console: {msg.text}")
                    if msg.type == "error" else None)
            yield page
        finally:
            await browser.close()
