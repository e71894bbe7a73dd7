"""The dashboard pages in headless Chromium (Debian's, via Playwright's executable_path).

Every page, in JupyterLab's light and dark colours, with a workload that has fan-out, fan-in,
an actor and a failing task; no JavaScript error; screenshots kept in ``tests/artifacts/``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from helpers import CHROMIUM, chromium_page

import cellfleet
from cellfleet.kernel.chaos import ChaosRunner, Fault

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no chromium at {CHROMIUM}"),
]

pytest.importorskip("playwright.async_api")  # the browser tests need playwright


@cellfleet.remote
def square(x):
    time.sleep(0.05)
    return x * x


@cellfleet.remote
def total(*xs):
    return sum(xs)


@cellfleet.remote
def fails():
    raise ValueError("this task fails on purpose")


@cellfleet.remote
class Account:
    def __init__(self):
        self.balance = 0

    def deposit(self, n):
        self.balance += n
        return self.balance


async def _url(jp_fetch, jp_serverapp, jp_http_port, jp_base_url, cluster, page_name):
    clusters = json.loads((await jp_fetch("cellfleet", "api", "clusters")).body)["clusters"]
    cid = next(c["id"] for c in clusters if c["address"] == cluster["gcs_address"])
    token = jp_serverapp.identity_provider.token
    return (f"http://127.0.0.1:{jp_http_port}{jp_base_url}cellfleet/dashboard/{cid}/"
            f"{page_name}?token={token}")


async def _until(page, expression, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not await page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        await asyncio.sleep(0.1)


def _workload() -> list[str]:
    refs = [square.remote(i) for i in range(6)]
    result = total.remote(*refs)
    account = Account.remote()
    calls = [account.deposit.remote(n) for n in range(3)]
    bad = fails.remote()
    assert cellfleet.get(result) == sum(i * i for i in range(6))
    assert cellfleet.get(calls)[-1] == 3
    with pytest.raises(ValueError):
        cellfleet.get(bad)
    now = time.time()  # a fault as %chaos records it: the timeline draws it apart
    ChaosRunner._record(Fault("kill-worker", 0, "a worker", "its running task", worker_pid=1),
                        now - 0.05, now, "the task was retried")
    return [r.task_id() for r in refs] + [result.task_id()]


async def test_every_page_in_light_and_dark(jp_fetch, jp_serverapp, jp_http_port, jp_base_url,
                                           cluster):
    base = await _url(jp_fetch, jp_serverapp, jp_http_port, jp_base_url, cluster, "graph")
    errors: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    async with chromium_page(errors) as page:
        await page.goto(base)
        await _until(page, "(window.CELLFLEET_UPDATES || 0) >= 1")
        # run tasks now: they appear without a reload, in the widget's own component
        task_ids = await asyncio.to_thread(_workload)
        check = (f"{json.dumps(task_ids)}.every(t => {{ const n = document.querySelector("
                 "`.cf-node[data-id='${t}']`); return n && n.dataset.state === 'FINISHED'; })")
        await _until(page, check)
        assert await page.locator(".cf-edge.cf-data").count() >= 6
        assert await page.locator(".cf-actor").count() == 1
        await page.locator(".cf-node[data-state=FAILED]").click()
        assert "this task fails on purpose" in await page.locator(".cf-details").inner_text()
        for theme in ("light", "dark"):
            for name in ("", "graph", "timeline", "actors", "objects", "nodes"):
                url = base.replace("/graph?", f"/{name}?") + f"&theme={theme}"
                await page.goto(url)
                await _until(page, "(window.CELLFLEET_UPDATES || 0) >= 2")
                status = await page.text_content("#status")
                assert status.startswith("live"), (name, status)
                if name == "timeline":  # rows are labelled node:pid, functions have a key
                    await _until(page, "document.querySelectorAll('#keys .chip').length >= 4")
                    keys = await page.text_content("#keys")
                    assert "square" in keys and "failed" in keys
                    await _until(page, "document.querySelector('#keys').textContent"
                                       ".includes('fault (%chaos)')")
                if name == "objects":
                    text = await page.text_content("#stores")
                    assert "MiB" in text or "GiB" in text, text
                    # the chart starts with the history the server kept, not empty
                    points = await page.evaluate("Bokeh.documents[0].get_model_by_name("
                                                 "'usage').data.xs[0].length")
                    assert points >= 2, points
                if name == "":
                    await _until(page, "document.querySelector('#functions table') !== null")
                    assert "square" in await page.text_content("#functions")
                    # recent tasks: their node and attempt
                    recent = await page.text_content("#recent")
                    assert cluster["node_id"][:12] in recent and "fails" in recent, recent
                background = await page.evaluate(
                    "getComputedStyle(document.body).backgroundColor")
                assert background == ("rgb(17, 17, 17)" if theme == "dark"
                                      else "rgb(255, 255, 255)")
                await page.screenshot(path=str(ARTIFACTS / f"page-{name or 'overview'}-"
                                                            f"{theme}.png"))
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
        async with chromium_page(errors) as page:
            await page.goto(url)
            await _until(page, "(window.CELLFLEET_UPDATES || 0) >= 1")
            kc.execute("@cellfleet.remote\ndef from_the_kernel(x):\n    return x * x\n"
                       "cellfleet.get([from_the_kernel.remote(i) for i in range(4)])")
            await _until(page, "[...document.querySelectorAll('.cf-node.cf-task')].filter(n =>"
                               " n.textContent.startsWith('from_the_kernel')"
                               " && n.dataset.state === 'FINISHED').length >= 4", timeout=30)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert errors == []
