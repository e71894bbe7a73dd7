"""Kernel start, shutdown, restart and SIGKILL; kernels connected to a running cluster."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import alive, free_port, runtime_processes, wait_until

from cellfleet.kernel.install import main as install_main

pytestmark = pytest.mark.integration

FIRST_TASK = "@cellfleet.remote\ndef one():\n    return 1\ncellfleet.get(one.remote())"


def test_start_up_to_first_task(new_kernel) -> None:
    started = time.monotonic()
    kernel = new_kernel()
    ready = time.monotonic() - started
    cell = kernel.execute(FIRST_TASK)
    assert cell.ok, cell.traceback_text()
    assert cell.result == "1"
    first_task = time.monotonic() - started
    assert ready < 20 and first_task < 30, (ready, first_task)
    assert kernel.runtime_pids(), "the kernel started no runtime"


def test_shutdown_leaves_no_runtime_process(new_kernel) -> None:
    kernel = new_kernel()
    assert kernel.execute(FIRST_TASK).ok
    pids = kernel.runtime_pids()
    assert len(pids) >= 3  # GCS, raylet, a worker
    kernel.close()
    wait_until(lambda: not alive(pids), timeout=15, message="runtime processes to exit")


def test_restart_replaces_the_runtime(new_kernel) -> None:
    kernel = new_kernel()
    assert kernel.execute(FIRST_TASK).ok
    old = kernel.runtime_pids()
    kernel.restart()
    wait_until(lambda: not alive(old), timeout=15, message="the old runtime to exit")
    cell = kernel.execute(FIRST_TASK)
    assert cell.ok, cell.traceback_text()
    assert kernel.runtime_pids().isdisjoint(old)


def test_sigkilled_kernel_leaves_nothing(new_kernel) -> None:
    kernel = new_kernel()
    assert kernel.execute(FIRST_TASK).ok
    pids = kernel.runtime_pids()
    assert pids
    os.kill(kernel.pid, signal.SIGKILL)
    wait_until(lambda: not alive(pids), timeout=15,
               message="the runtime of a SIGKILLed kernel to exit")


def test_cluster_stop_and_restart_magics(new_kernel) -> None:
    kernel = new_kernel()
    assert kernel.execute(FIRST_TASK).ok
    old = kernel.runtime_pids()
    stopped = kernel.execute("%cluster stop")
    assert stopped.ok, stopped.traceback_text()
    wait_until(lambda: not alive(old), timeout=15, message="the stopped runtime to exit")
    shown = kernel.execute("%cluster")
    assert not shown.ok
    assert shown.reply["content"]["ename"] == "ClusterError"
    restarted = kernel.execute("%cluster restart --num-cpus 1")
    assert restarted.ok, restarted.traceback_text()
    assert "free of 1" in restarted.result
    assert kernel.execute(FIRST_TASK).result == "1"


def test_kernel_answers_at_once_even_if_the_cluster_never_does(new_kernel) -> None:
    """A cluster address that accepts connections and then says nothing: the kernel still
    answers at once, and the first cell gets one message instead of hanging."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        kernel = new_kernel(env={"CELLFLEET_ADDRESS": address, "CELLFLEET_TOKEN": "x"})
        msg_id = kernel.kc.kernel_info()
        kernel.reply(msg_id, timeout=10)
        answered = time.monotonic() - started
        cell = kernel.execute("'cellfleet' in dir()", timeout=60)
        assert cell.result == "True"
        assert f"could not connect to the cluster at {address}" in cell.stderr
        assert cell.stderr.count("\n") == 1
        assert answered < 10, answered
    finally:
        silent.close()


def test_nothing_at_the_address_gives_one_clear_message(new_kernel) -> None:
    kernel = new_kernel(env={"CELLFLEET_ADDRESS": "127.0.0.1:9", "CELLFLEET_TOKEN": "x"})
    cell = kernel.execute("1 + 1")
    assert cell.result == "2"
    assert "could not connect to the cluster at 127.0.0.1:9" in cell.stderr
    assert cell.stderr.count("\n") == 1
    again = kernel.execute("%cluster")
    assert not again.ok
    assert len(again.error["traceback"]) == 1
    task = kernel.execute(FIRST_TASK)
    assert not task.ok
    assert len(task.error["traceback"]) == 1, task.traceback_text()
    assert "127.0.0.1:9" in task.traceback_text()


@pytest.fixture
def head_cluster(tmp_path):
    """A cluster started with ``cellfleet start --head``; stopped after the test."""
    port = free_port()
    cli = [sys.executable, "-c", "import sys, cellfleet.cli; sys.exit(cellfleet.cli.main())"]
    out = subprocess.run([*cli, "start", "--head", "--port", str(port), "--num-cpus", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([*cli, "stop"], capture_output=True, timeout=60)


def test_remote_address_spec_connects_and_leaves_the_cluster_running(
        head_cluster, tmp_path, new_kernel, monkeypatch) -> None:
    prefix = tmp_path / "prefix"
    assert install_main(["install", "--prefix", str(prefix), "--name", "cellfleet-remote-test",
                         "--address", head_cluster]) == 0
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(
        p for p in (str(prefix / "share" / "jupyter"), os.environ.get("JUPYTER_PATH")) if p))
    kernel = new_kernel(kernel_name="cellfleet-remote-test")
    cell = kernel.execute("%cluster")
    assert cell.ok, cell.traceback_text()
    assert head_cluster in cell.result and "(connected)" in cell.result
    assert kernel.execute(FIRST_TASK).result == "1"
    assert not kernel.runtime_pids()  # the kernel started none of its own
    cluster_pids = {p.pid for p in _cluster_processes()}
    assert cluster_pids
    kernel.close()
    assert alive(cluster_pids) == cluster_pids


def test_a_wrong_token_gives_one_clear_message(head_cluster, new_kernel) -> None:
    kernel = new_kernel(env={"CELLFLEET_ADDRESS": head_cluster, "CELLFLEET_TOKEN": "wrong"})
    cell = kernel.execute("1 + 1")
    assert cell.result == "2"
    assert "refused this kernel's token" in cell.stderr
    assert cell.stderr.count("\n") == 1


def test_cluster_connect_and_restart_keep_the_cluster_running(head_cluster, new_kernel) -> None:
    kernel = new_kernel()
    own = kernel.runtime_pids()
    cell = kernel.execute(f"%cluster connect {head_cluster}")
    assert cell.ok, cell.traceback_text()
    assert "(connected)" in cell.result
    wait_until(lambda: not alive(own), timeout=15, message="the local runtime to stop")
    assert kernel.execute(FIRST_TASK).result == "1"
    cluster_pids = {p.pid for p in _cluster_processes()}
    restarted = kernel.execute("%cluster restart")
    assert restarted.ok, restarted.traceback_text()
    assert head_cluster in restarted.result
    assert alive(cluster_pids) == cluster_pids
    assert kernel.execute(FIRST_TASK).result == "1"
    bad = kernel.execute("%cluster connect 127.0.0.1:9")
    assert not bad.ok
    assert len(bad.error["traceback"]) == 1
    assert "127.0.0.1:9" in bad.traceback_text()


def _cluster_processes():
    return [p for p in runtime_processes() if "cellfleet.gcs" in " ".join(p.cmdline())
            or "cellfleet.raylet" in " ".join(p.cmdline())]
