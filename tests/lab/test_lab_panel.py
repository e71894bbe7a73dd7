"""The prebuilt JupyterLab extension in a real JupyterLab, driven by headless Chromium.

JupyterLab runs as a subprocess with the tree's build (``extension/labextension``) on its
``extra_labextensions_path`` (ahead of any installed copy) and the cellfleet server extension
enabled. The test process starts a cluster and registers it with the open notebook's kernel id;
the sidebar must list it as "this notebook", and a page button must open the dashboard page in
an IFrame split next to the notebook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from helpers import free_port, wait_until

import cellfleet
from cellfleet.extension.discovery import register_cluster, unregister_cluster

CHROMIUM = os.environ.get("CELLFLEET_CHROMIUM", "/usr/bin/chromium")
BUILT = Path(__file__).resolve().parents[2] / "extension" / "labextension"
TOKEN = "cellfleet-lab-test"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no chromium at {CHROMIUM}"),
    pytest.mark.skipif(not (BUILT / "package.json").exists(),
                       reason="the JupyterLab extension is not built (labextension/: "
                              "jlpm install && jlpm build:prod)"),
]

sync_api = pytest.importorskip("playwright.sync_api")


def _get(url: str) -> dict | None:
    request = urllib.request.Request(url, headers={"Authorization": f"token {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None


def _stop(proc: subprocess.Popen) -> None:
    """Stop JupyterLab and every process it started (its kernels)."""
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
def lab(tmp_path, monkeypatch):
    """A JupyterLab server with a notebook in its directory; yields its base URL."""
    runtime = tmp_path / "runtime"
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))  # shared with the server
    labext = tmp_path / "labextensions"
    labext.mkdir()
    (labext / "cellfleet").symlink_to(BUILT, target_is_directory=True)
    root = tmp_path / "notebooks"
    root.mkdir()
    (root / "demo.ipynb").write_text(json.dumps({
        "cells": [], "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
    }))
    port = free_port()
    log = open(tmp_path / "lab.log", "wb")  # noqa: SIM115 - closed below
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
         "--ip=127.0.0.1", "--allow-root", f"--IdentityProvider.token={TOKEN}",
         f"--notebook-dir={root}",
         "--ServerApp.jpserver_extensions=cellfleet.extension=True",
         f"--LabApp.extra_labextensions_path={labext}"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/"
    try:
        wait_until(lambda: proc.poll() is not None or _get(base + "api/status"), timeout=30,
                   message="JupyterLab to answer")
        assert proc.poll() is None, "JupyterLab exited:\n" + (tmp_path / "lab.log").read_text()
        yield base
    finally:
        _stop(proc)
        log.close()


def test_sidebar_lists_cluster_and_opens_page(lab):
    info = cellfleet.init(num_cpus=1)
    address = info["gcs_address"]
    base = lab
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--headless"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.on("console", lambda msg: errors.append(
                f"console: {msg.text} at {msg.location.get('url', '')}")
                if msg.type == "error" else None)
            page.goto(f"{base}lab/tree/demo.ipynb?token={TOKEN}")

            # the notebook's kernel, which the cluster is then registered with
            def kernel_id():
                sessions = _get(base + "api/sessions") or []
                return next((s["kernel"]["id"] for s in sessions
                             if s["path"].endswith("demo.ipynb") and s.get("kernel")), None)

            kid = wait_until(kernel_id, timeout=30, message="the notebook's kernel")
            token_file = os.path.join(info["session_dir"], "token")
            register_cluster(address, token_file, kernel_id=kid,
                             session_dir=info["session_dir"])
            try:
                clusters = _get(base + "cellfleet/api/clusters")["clusters"]
                cluster = next(c for c in clusters if c["address"] == address)
                assert cluster["kernel_id"] == kid

                tab = page.locator('.jp-SideBar li[data-id="cellfleet-sidebar"]')
                tab.wait_for(timeout=30_000)
                tab.click()
                entry = page.locator("#cellfleet-sidebar li.jp-cellfleet-cluster"
                                     f'[data-cluster-id="{cluster["id"]}"]')
                entry.wait_for(timeout=15_000)
                assert address in entry.inner_text()
                # marked as the notebook's and listed first, once the notebook is active
                first = page.locator("#cellfleet-sidebar li.jp-cellfleet-cluster").first
                first.locator(".jp-cellfleet-badge").wait_for(timeout=15_000)
                assert first.get_attribute("data-cluster-id") == cluster["id"]
                assert "this notebook" in first.inner_text()

                entry.locator('button[data-page="timeline"]').click()
                frame = page.locator(
                    f'#jp-main-dock-panel #cellfleet-{cluster["id"]}-timeline iframe')
                frame.wait_for(timeout=15_000)
                src = frame.get_attribute("src")
                assert "/cellfleet/dashboard/" in src and src.endswith("/timeline")
                # split next to the notebook: two tab bars in the main area
                tab_bars = page.locator("#jp-main-dock-panel > .lm-TabBar")
                wait_until(lambda: tab_bars.count() >= 2, timeout=5,
                           message="the dashboard split beside the notebook")
                # the dashboard page loads inside the frame (authenticated by the cookie)
                inner = page.frame_locator(
                    f'#cellfleet-{cluster["id"]}-timeline iframe').locator("body")
                inner.wait_for(timeout=15_000)
                assert "Timeline" in inner.inner_text()
            finally:
                unregister_cluster(address)
        finally:
            browser.close()
    ours = [e for e in errors if "cellfleet" in e.lower()]
    assert not ours, ours
