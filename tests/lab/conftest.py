"""A real JupyterLab for the browser tests, and headless Chromium driving it.

JupyterLab runs as a subprocess with the tree's build (``extension/labextension``) on its
``extra_labextensions_path`` (ahead of any installed copy), the cellfleet server extension
enabled, the cellfleet kernelspec on its path, widget state saved with notebooks, and the app
exposed as ``window.jupyterapp`` so a test can run Lab commands. Screenshots go to
``tests/artifacts/`` (ignored by git), for a person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest
from helpers import free_port, wait_until
from lab_helpers import BUILT, CHROMIUM, ROOT, TOKEN, Lab


def _stop(proc: subprocess.Popen) -> None:
    """Stop JupyterLab and every process it started (its kernels and their runtimes)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=5)


@pytest.fixture
def lab(tmp_path, monkeypatch) -> Iterator[Lab]:
    """A JupyterLab server over ``tmp_path/notebooks``."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM}")
    if not (BUILT / "package.json").exists():
        pytest.skip("the JupyterLab extension is not built (labextension/: jlpm install && "
                    "jlpm build:prod)")
    runtime = tmp_path / "runtime"
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))  # shared with the server
    labext = tmp_path / "labextensions"
    labext.mkdir()
    (labext / "cellfleet").symlink_to(BUILT, target_is_directory=True)
    data = tmp_path / "data"
    shutil.copytree(ROOT / "kernel" / "kernelspec", data / "kernels" / "cellfleet")
    settings = tmp_path / "settings"
    manager = settings / "@jupyter-widgets" / "jupyterlab-manager"
    manager.mkdir(parents=True)
    (manager / "plugin.jupyterlab-settings").write_text(json.dumps({"saveState": True}))
    news = settings / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    root = tmp_path / "notebooks"
    root.mkdir()
    port = free_port()
    log_path = tmp_path / "lab.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTER_PATH=str(data), JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
               CELLFLEET_NUM_CPUS="2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
         "--ip=127.0.0.1", "--allow-root", f"--IdentityProvider.token={TOKEN}",
         f"--notebook-dir={root}", "--LabApp.expose_app_in_browser=True",
         "--ServerApp.jpserver_extensions=cellfleet.extension=True",
         f"--LabApp.extra_labextensions_path={labext}"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    lab = Lab(f"http://127.0.0.1:{port}/", root, log_path)
    try:
        wait_until(lambda: proc.poll() is not None or lab.get("api/status"), timeout=30,
                   message="JupyterLab to answer")
        assert proc.poll() is None, "JupyterLab exited:\n" + log_path.read_text()
        yield lab
    finally:
        _stop(proc)
        log.close()


@pytest.fixture
def browser() -> Iterator[tuple]:
    """(a Chromium page, the JavaScript errors it reported)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=["--no-sandbox", "--headless"])
        try:
            page = chromium.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.on("console", lambda msg: errors.append(
                f"console: {msg.text} at {msg.location.get('url', '')}")
                if msg.type == "error" else None)
            yield page, errors
        finally:
            chromium.close()
