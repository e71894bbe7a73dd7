"""Runtime processes live exactly as long as the driver that started them, however it ends."""

from __future__ import annotations

import contextlib
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from helpers import runtime_processes, wait_until

import cellfleet
from cellfleet._session import Session, root_dir

pytestmark = pytest.mark.integration


@cellfleet.remote
def add_one(x: int) -> int:
    return x + 1


def processes_of(marker: str) -> list[psutil.Process]:
    """Live runtime processes whose command line mentions ``marker`` (a session or the root)."""
    found = []
    for proc in runtime_processes():
        try:
            if marker in " ".join(proc.info["cmdline"] or []) and (
                    proc.status() != psutil.STATUS_ZOMBIE):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def arenas_of(session_dir: str) -> list[Path]:
    return list(Path("/dev/shm").glob(f"cellfleet-{Path(session_dir).name}-*"))


DRIVER = textwrap.dedent("""
    import os, sys, threading
    import cellfleet

    @cellfleet.remote
    def add_one(x):
        return x + 1

    info = cellfleet.init(num_cpus=2, object_store_memory=64 * 2**20)
    assert cellfleet.get(add_one.remote(1), timeout=30) == 2
    helper = os.fork() if sys.argv[1] == "fork" else -1
    if helper == 0:  # a helper process that outlives the driver
        threading.Event().wait()
    print("READY", info["session_dir"], helper, flush=True)
    if sys.argv[1] in ("block", "fork"):
        threading.Event().wait()
""")


def start_driver(mode: str) -> tuple[subprocess.Popen, str]:
    """Run the driver script; returns it and its session directory once it printed READY.

    Modes: ``end`` returns at once, ``block`` waits forever, ``fork`` forks a helper that
    waits forever (its pid is the third word of the READY line) and waits forever too.
    """
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("READY"):
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the driver did not start: {line!r} {err}")
    return proc, line.split()[1]


def test_shutdown_leaves_nothing_and_init_works_again() -> None:
    root = str(root_dir())
    for i in range(2):
        info = cellfleet.init(num_cpus=1, object_store_memory=64 * 2**20)
        assert cellfleet.get(add_one.remote(i), timeout=30) == i + 1
        assert processes_of(info["session_dir"])
        cellfleet.shutdown()
        assert not cellfleet.is_initialized()
        assert not processes_of(root), "shutdown() returned with runtime processes alive"
        assert not arenas_of(info["session_dir"])


def test_sigkilled_driver_takes_its_processes_along() -> None:
    driver, session_dir = start_driver("block")
    try:
        pids = [p.pid for p in processes_of(session_dir)]
        assert len(pids) >= 3, "expected a GCS, a raylet and workers"
        assert arenas_of(session_dir)
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
        wait_until(lambda: not processes_of(session_dir), timeout=15,
                   message="the GCS, raylet and workers of a SIGKILLed driver to exit")
        wait_until(lambda: not arenas_of(session_dir), timeout=5,
                   message="the object-store arena to be removed")
    finally:
        driver.kill()
        driver.wait()
        for proc in processes_of(session_dir):
            proc.kill()


def test_forked_helper_of_a_killed_driver_does_not_keep_the_cluster_alive() -> None:
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, "fork"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([driver.stdout], [], [], 60)
    line = driver.stdout.readline() if ready else ""
    assert line.startswith("READY"), f"the driver did not start: {line!r}"
    _, session_dir, helper_pid = line.split()
    helper = psutil.Process(int(helper_pid))
    try:
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
        wait_until(lambda: not processes_of(session_dir), timeout=15,
                   message="the cluster of a killed driver to exit while its helper lives")
        assert helper.is_running() and helper.status() != psutil.STATUS_ZOMBIE
    finally:
        helper.kill()
        driver.kill()
        driver.wait()
        for proc in processes_of(session_dir):
            proc.kill()


def test_a_new_init_reclaims_the_arena_of_a_cluster_killed_with_sigkill() -> None:
    driver, session_dir = start_driver("block")
    try:
        gcs_pid, raylet_pid = Session(Path(session_dir)).info()["pids"]
        for pid in (raylet_pid, driver.pid, gcs_pid):  # as the OOM killer or kill -9 would
            psutil.Process(pid).kill()
        driver.wait(10)
        wait_until(lambda: not processes_of(session_dir), timeout=15,
                   message="the processes of the killed cluster to exit")
        assert arenas_of(session_dir), "the killed raylet had no chance to remove its arena"
        info = cellfleet.init(num_cpus=1, object_store_memory=64 * 2**20)
        assert not arenas_of(session_dir)
        assert arenas_of(info["session_dir"])  # the new cluster's own arena is untouched
        assert cellfleet.get(add_one.remote(1), timeout=30) == 2
    finally:
        cellfleet.shutdown()
        driver.kill()
        driver.wait()
        for proc in processes_of(session_dir):
            proc.kill()


def test_shutdown_removes_the_arena_of_a_raylet_it_had_to_kill(fresh_cluster) -> None:
    info = fresh_cluster(num_cpus=1, object_store_memory=64 * 2**20)
    _, raylet_pid = Session(Path(info["session_dir"])).info()["pids"]
    raylet = psutil.Process(raylet_pid)
    raylet.suspend()  # deaf to SIGTERM: shutdown() escalates to SIGKILL
    try:
        cellfleet.shutdown()
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            raylet.kill()
    assert not arenas_of(info["session_dir"])


def listen_backlog(address: str) -> int:
    """The accept backlog of the socket listening on ``address`` (``ss`` shows it as Send-Q)."""
    port = address.rpartition(":")[2]
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[2])


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_every_server_listens_with_a_backlog_of_512(fresh_cluster) -> None:
    info = fresh_cluster(num_cpus=1, object_store_memory=64 * 2**20)
    assert cellfleet.get(add_one.remote(1), timeout=30) == 2
    core = cellfleet._context.core
    workers = core.request("raylet", cellfleet._messages.GetNodeStats())["workers"]
    addresses = [info["gcs_address"], info["raylet_address"], core.address,
                 *(w["address"] for w in workers if w["address"])]
    assert len(addresses) >= 4
    assert {a: listen_backlog(a) for a in addresses} == {a: 512 for a in addresses}


def test_driver_that_just_ends_leaves_nothing() -> None:
    driver, session_dir = start_driver("end")
    try:
        assert driver.wait(30) == 0, driver.stderr.read()
        wait_until(lambda: not processes_of(session_dir), timeout=15,
                   message="the processes of a finished driver to exit")
        assert not arenas_of(session_dir)
    finally:
        driver.kill()
        driver.wait()


def test_init_twice(fresh_cluster) -> None:
    info = fresh_cluster(num_cpus=1)
    with pytest.raises(RuntimeError, match="ignore_reinit_error"):
        cellfleet.init()
    again = cellfleet.init(ignore_reinit_error=True)
    assert again["gcs_address"] == info["gcs_address"]
    assert cellfleet.get(add_one.remote(1), timeout=30) == 2


@pytest.mark.parametrize("options, error, message", [
    ({"num_cpus": -1}, ValueError, "num_cpus"),
    ({"resources": {"CPU": 1}}, ValueError, "num_cpus"),
    ({"num_gpus": "two"}, ValueError, "num_gpus"),
    ({"object_store_memory": 10}, ValueError, "object_store_memory"),
    ({"no_such_option": 1}, TypeError, "no_such_option"),
    ({"address": "nonsense"}, ValueError, "nonsense"),
])
def test_init_with_bad_options(options: dict, error: type, message: str) -> None:
    started = time.monotonic()
    with pytest.raises(error, match=message):
        cellfleet.init(**options)
    assert time.monotonic() - started < 15, "a bad option took long to report"
    assert not cellfleet.is_initialized()
    assert not processes_of(str(root_dir())), "a failed init() left processes running"


def test_init_with_bad_gcs_storage_leaves_nothing() -> None:
    with pytest.raises(Exception):  # noqa: B017 - which error is the next test's business
        cellfleet.init(num_cpus=1, gcs_storage="nonsense")
    assert not cellfleet.is_initialized()
    assert not processes_of(str(root_dir())), "a failed init() left processes running"


def test_init_with_bad_gcs_storage_says_why() -> None:
    with pytest.raises(Exception, match="gcs_storage|not understood"):
        cellfleet.init(num_cpus=1, gcs_storage="nonsense")
