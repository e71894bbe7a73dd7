"""The dashboard pages in headless Chromium (Debian's, via Playwright's executable_path)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time

import pytest

import cellfleet

CHROMIUM = os.environ.get("CELLFLEET_CHROMIUM", "/usr/bin/chromium")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no chromium at {CHROMIUM}"),
]

async_api = pytest.importorskip("playwright.async_api")


@cellfleet.remote
def square(x):
    time.sleep(0.05)
    return x * x


@cellfleet.remote
def total(*xs):
    return sum(xs)


async def _open(jp_fetch, jp_serverapp, jp_http_port, jp_base_url, cluster, page_name):
    clusters = json.loads((await jp_fetch("cellfleet", "api", "clusters")).body)["clusters"]
    cid = next(c["id"] for c in clusters if c["address"] == cluster["gcs_address"])
    token = jp_serverapp.identity_provider.token
    return (f"http://127.0.0.1:{jp_http_port}{jp_base_url}cellfleet/dashboard/{cid}/"
            f"{page_name}?token={token}")


@contextlib.asynccontextmanager
async def _browser_page(errors: list[str]):
    """A page of headless Chromium; JavaScript errors and console errors land in ``errors``."""
    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                           args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.on("console", lambda msg: errors.append(f"console: {msg.text}")
                    if msg.type == "error" else None)
            yield page
        finally:
            await browser.close()


async def _until(page, expression, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not await page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        await asyncio.sleep(0.1)


async def test_task_graph_updates_live(jp_fetch, jp_serverapp, jp_http_port, jp_base_url,
                                       cluster):
    url = await _open(jp_fetch, jp_serverapp, jp_http_port, jp_base_url, cluster, "graph")
    errors: list[str] = []
    async with _browser_page(errors) as page:
        await page.goto(url)
        await _until(page, "(window.CELLFLEET_UPDATES || 0) >= 1")
        # run tasks now: they appear without a reload
        refs = [square.remote(i) for i in range(6)]
        result = total.remote(*refs)
        assert await asyncio.to_thread(cellfleet.get, result) == sum(i * i for i in range(6))
        task_ids = [r.task_id() for r in refs] + [result.task_id()]
        check = (
            "(() => { const m = Bokeh.documents[0].get_model_by_name('tasks');"
            " const ids = m.data.id, states = m.data.state;"
            f" return {json.dumps(task_ids)}.every(t => {{ const i = ids.indexOf(t);"
            " return i >= 0 && states[i] === 'FINISHED'; }); })()"
        )
        await _until(page, check)
        edges = await page.evaluate(
            "Bokeh.documents[0].get_model_by_name('edges').data.x0.length")
        assert edges >= 12  # 6 returns + 6 arguments of total
        status = await page.text_content("#status")
        assert status.startswith("live")
        # the other pages render and update too
        for other in ("timeline", "actors", "objects", "nodes"):
            await page.goto(url.replace("/graph?", f"/{other}?"))
            await _until(page, "(window.CELLFLEET_UPDATES || 0) >= 1")
    assert errors == []


async def test_task_graph_follows_a_cellfleet_kernel(jp_fetch, jp_serverapp, jp_http_port,
                                                     jp_base_url, jp_runtime_dir, jp_data_dir):
    """A real cellfleet kernel registers its cluster; its tasks appear on the open page."""
    import shutil

    from jupyter_client.manager import KernelManager

    import cellfleet.kernel

    spec = os.path.join(os.path.dirname(cellfleet.kernel.__file__), "kernelspec")
    shutil.copytree(spec, jp_data_dir / "kernels" / "cellfleet")
    km = KernelManager(kernel_name="cellfleet")
    km.start_kernel(env={**os.environ, "CELLFLEET_NUM_CPUS": "2",
                         "JUPYTER_RUNTIME_DIR": str(jp_runtime_dir)})
    kc = km.client()
    kc.start_channels()
    errors: list[str] = []
    try:
        kc.wait_for_ready(timeout=60)
        kernel_id = os.path.basename(km.connection_file)[len("kernel-"):-len(".json")]

        async def kernel_cluster():
            body = (await jp_fetch("cellfleet", "api", "clusters")).body
            return next((c for c in json.loads(body)["clusters"]
                         if c.get("kernel_id") == kernel_id), None)

        deadline = time.monotonic() + 60
        while (found := await kernel_cluster()) is None:
            assert time.monotonic() < deadline, "the kernel's cluster was never registered"
            kc.execute("cellfleet.nodes()")  # the first use waits for the runtime
            await asyncio.sleep(0.2)
        token = jp_serverapp.identity_provider.token
        url = (f"http://127.0.0.1:{jp_http_port}{jp_base_url}cellfleet/dashboard/"
               f"{found['id']}/graph?token={token}")
        async with _browser_page(errors) as page:
            await page.goto(url)
            await _until(page, "(window.CELLFLEET_UPDATES || 0) >= 1")
            kc.execute("@cellfleet.remote\ndef from_the_kernel(x):\n    return x * x\n"
                       "cellfleet.get([from_the_kernel.remote(i) for i in range(4)])")
            await _until(page, "(() => { const m = Bokeh.documents[0]"
                               ".get_model_by_name('tasks').data;"
                               " return m.name.filter((n, i) => n === 'from_the_kernel'"
                               " && m.state[i] === 'FINISHED').length >= 4; })()",
                         timeout=30)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert errors == []
