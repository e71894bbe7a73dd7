"""The prebuilt JupyterLab extension in a real JupyterLab, driven by headless Chromium.

The test process starts a cluster and registers it with the open notebook's kernel id; the
sidebar must list it under this server's notebooks, named by the notebook and marked "this
notebook"; page buttons open dashboard pages as tabs of one dock area split beside the
notebook, and the pages follow JupyterLab's theme.
"""

from __future__ import annotations

import os

import pytest
from helpers import wait_until
from lab_helpers import Lab, notebook_json, screenshot

import cellfleet
from cellfleet.extension.discovery import register_cluster, unregister_cluster

pytestmark = pytest.mark.integration


def test_sidebar_lists_cluster_and_opens_page(lab: Lab, browser):
    info = cellfleet.init(num_cpus=1)
    address = info["gcs_address"]
    page, errors = browser
    (lab.root / "demo.ipynb").write_text(notebook_json([], kernel="python3"))
    page.goto(lab.url("lab/tree/demo.ipynb"))
    # the notebook's kernel, which the cluster is then registered with
    kid = wait_until(lambda: lab.kernel_id("demo.ipynb"), timeout=30,
                     message="the notebook's kernel")
    token_file = os.path.join(info["session_dir"], "token")
    register_cluster(address, token_file, kernel_id=kid,
                     session_dir=info["session_dir"])
    try:
        clusters = lab.get("cellfleet/api/clusters")["clusters"]
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

        assert "demo.ipynb" in entry.locator(".jp-cellfleet-title").inner_text()
        section = page.locator("#cellfleet-sidebar li.jp-cellfleet-section").first
        assert section.inner_text().lower() == "notebooks on this server"

        entry.locator('button[data-page="timeline"]').click()
        frame = page.locator(
            f'#jp-main-dock-panel #cellfleet-{cluster["id"]}-timeline iframe')
        frame.wait_for(timeout=15_000)
        src = frame.get_attribute("src")
        assert "/cellfleet/dashboard/" in src and "/timeline?theme=light" in src
        # split next to the notebook: two tab bars in the main area
        tab_bars = page.locator("#jp-main-dock-panel > .lm-TabBar")
        wait_until(lambda: tab_bars.count() == 2, timeout=5,
                   message="the dashboard split beside the notebook")
        # the dashboard page loads inside the frame (authenticated by the cookie)
        inner = page.frame_locator(
            f'#cellfleet-{cluster["id"]}-timeline iframe').locator("#status")
        wait_until(lambda: inner.inner_text().startswith("live"), timeout=15,
                   message="the timeline page live in its frame")
        name = page.frame_locator(
            f'#cellfleet-{cluster["id"]}-timeline iframe').locator("header .name")
        assert name.inner_text() == "cellfleet · demo.ipynb"
        # more pages join the same dock area as tabs: no further split
        entry.locator('button[data-page="overview"]').click()
        entry.locator('button[data-page="graph"]').click()
        page.locator(f'#cellfleet-{cluster["id"]}-graph iframe').wait_for(timeout=15_000)
        assert tab_bars.count() == 2
        bar = tab_bars.filter(has_text="Timeline")
        labels = bar.locator(".lm-TabBar-tabLabel").all_inner_texts()
        assert labels == ["Timeline · demo.ipynb", "Overview · demo.ipynb",
                          "Task graph · demo.ipynb"], labels
        # JupyterLab's dark theme: the pages are drawn again in it
        page.evaluate("jupyterapp.commands.execute('apputils:change-theme',"
                      " {theme: 'JupyterLab Dark'})")
        graph = page.locator(f'#cellfleet-{cluster["id"]}-graph iframe')
        wait_until(lambda: "theme=dark" in (graph.get_attribute("src") or ""), timeout=15,
                   message="the pages in the dark theme")
        status = page.frame_locator(f'#cellfleet-{cluster["id"]}-graph iframe').locator(
            "#status")
        wait_until(lambda: status.inner_text().startswith("live"), timeout=15,
                   message="the graph page live in its frame")
        screenshot(page, "lab-sidebar-dark")
    finally:
        unregister_cluster(address)
    ours = [e for e in errors if "cellfleet" in e.lower()]
    assert not ours, ours
