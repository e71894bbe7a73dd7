"""A real local Ray cluster for the Ray backend's tests, and kernels on it.

One Ray head for the whole run (``ray start --head`` on 127.0.0.1, every port chosen free,
token authentication on, Ray's dashboard for its state API), stopped at the end by ending
exactly the processes it started; skipped with the reason when Ray is not installed
(``pip install 'cellfleet[ray]'``).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import free_port
from pytest_jupyter.jupyter_server import *  # noqa: F403 - a Jupyter server for the dashboard

RAY_KERNEL = "cellfleet-ray-tests"
START_TIMEOUT_S = 180
WARM_UP_S = 180
# Ray gives its raylet 30 s to register with the GCS (a constant in Ray's node.py); a loaded
# machine can miss that: the head is started again, once.
RAY_START_DEADLINE = "timed out during startup"
START_ATTEMPTS = 2
TEST_TIMEOUT_S = START_ATTEMPTS * START_TIMEOUT_S + WARM_UP_S + 120
_failed: list[str] = []


def _ray_missing() -> str | None:
    try:
        import ray  # noqa: F401
        import ray.util.state  # noqa: F401 - the views read Ray's state API (ray[default])
    except ImportError as exc:
        return f"Ray is not installed here (pip install 'cellfleet[ray]'): {exc}"
    return None


def _load_kernel_conftest() -> Any:
    """tests/kernel/conftest.py's KernelProcess, loaded under a name of its own."""
    path = Path(__file__).parent.parent / "kernel" / "conftest.py"
    spec = importlib.util.spec_from_file_location("kernel_conftest_for_ray", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kernel_conftest = _load_kernel_conftest()
sys.path.insert(0, str(Path(__file__).parent.parent / "kernel"))  # its test modules, re-run


def ray_processes(root: str) -> list[psutil.Process]:
    """Every process of the Ray cluster whose session lives under ``root``: those naming it
    on their command line, and all their descendants (workers, dashboard modules)."""
    found: dict[int, psutil.Process] = {}
    me = psutil.Process()
    mine = {me.pid, *(p.pid for p in me.parents())}
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid in mine:
            continue
        try:
            if root in " ".join(proc.info["cmdline"] or ()):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except psutil.Error:
            continue
    return list(found.values())


def _stop(root: str) -> None:
    procs = ray_processes(root)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """This folder's tests may wait for Ray's head to start (up to two tries) before their
    own time: the 120 s per test of pyproject.toml does not fit that."""
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S))


def _restore(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[dict[str, str]]:
    """``{"address", "dashboard", "client", "root"}`` of a Ray head with 2 CPUs."""
    if _failed:  # pytest sets a failed session fixture up again for every test: once is enough
        pytest.fail(_failed[0])
    root = tempfile.mkdtemp(prefix="cfray-", dir="/tmp")  # Ray's socket paths must stay short
    token = Path(root, "auth_token")
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           # Ray would swap 127.0.0.1 for the machine's network address (read at its import)
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    missing = _ray_missing()
    if missing:
        _restore(saved)
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(missing)
    ports = {name: free_port() for name in (
        "port", "dashboard-port", "ray-client-server-port", "node-manager-port",
        "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "metrics-export-port", "runtime-env-agent-port")}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    command = [ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1",
               "--dashboard-host", "127.0.0.1", "--include-dashboard=true", "--num-cpus", "2",
               "--temp-dir", root, "--disable-usage-stats",
               *[f"--{name}={port}" for name, port in ports.items()]]
    started = time.monotonic()
    try:
        for _attempt in range(START_ATTEMPTS):
            result = subprocess.run(command, capture_output=True, text=True,
                                    timeout=START_TIMEOUT_S)
            if result.returncode == 0 or RAY_START_DEADLINE not in result.stderr:
                break
            _stop(root)  # what the failed start left, before starting again
        if result.returncode != 0:
            _failed.append(f"ray start failed:\n{result.stdout}\n{result.stderr}")
            pytest.fail(_failed[0])
        info = {"address": f"127.0.0.1:{ports['port']}",
                "dashboard": f"http://127.0.0.1:{ports['dashboard-port']}",
                "client": f"ray://127.0.0.1:{ports['ray-client-server-port']}",
                "root": root, "startup_s": f"{time.monotonic() - started:.1f}"}
        yield info
    finally:
        _stop(root)
        _restore(saved)
        left = ray_processes(root)
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"Ray processes left running: {[p.pid for p in left]}"


@pytest.fixture(scope="session")
def ray_kernelspec(ray_cluster: dict[str, str]) -> str:
    """A kernelspec running this interpreter (the one with Ray) on the Ray backend."""
    from cellfleet.kernel.install import main

    prefix = tempfile.mkdtemp(prefix="kernelspec-ray-", dir=os.environ["CELLFLEET_TMPDIR"])
    assert main(["install", "--prefix", prefix, "--name", RAY_KERNEL,
                 "--env", "CELLFLEET_BACKEND=ray",
                 "--env", f"RAY_ADDRESS={ray_cluster['address']}"]) == 0
    path = os.path.join(prefix, "share", "jupyter")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        p for p in (path, os.environ.get("JUPYTER_PATH")) if p)
    return RAY_KERNEL


def warm_up(k: Any) -> None:
    """Ray starts a new job's workers on its first tasks (seconds each on a busy machine):
    let that happen here, not inside a test's 60 s per cell."""
    cell = k.execute("@cellfleet.remote\ndef _warm():\n    return 1\n"
                     "cellfleet.get([_warm.remote(), _warm.remote()])", timeout=WARM_UP_S)
    assert cell.ok, cell.traceback_text()


@pytest.fixture(scope="session")
def ray_warm_up() -> Any:
    """``warm_up(kernel)`` for kernels a test starts itself."""
    return warm_up


@pytest.fixture(scope="session")
def kernel(ray_kernelspec: str) -> Iterator[Any]:
    """A kernel on the Ray cluster shared by the folder's tests (the name the kernel's own
    tests use, so they run here on Ray unchanged)."""
    k = kernel_conftest.KernelProcess(kernel_name=ray_kernelspec)
    try:
        warm_up(k)
        yield k
    finally:
        k.close()


@pytest.fixture
def jp_server_config() -> dict:
    return {"ServerApp": {"jpserver_extensions": {"cellfleet.extension": True}}}


@pytest.fixture
def jp_base_url() -> str:
    return "/user/alice/"  # as behind JupyterHub's proxy


# Kernels started inside a test (``new_kernel(kernel_name=...)``), shut down after it.
kernelspec_dir = kernel_conftest.kernelspec_dir
new_kernel = kernel_conftest.new_kernel
