"""The dashboard asks the notebook's kernel, in a real JupyterLab driven by Chromium.

A notebook on the cellfleet kernel puts objects (one held inside another, one read back as a
zero-copy numpy array), gets a task's result, and blocks a cell in ``get`` on a long task. The
dashboard's objects page (opened with Jupyter's cookie, as Lab's panels are) shows each
object's call site and cell, its owner and what keeps it alive; a POST without Jupyter's XSRF
token is refused; the graph page's Cancel button cancels the running task through the kernel's
control channel while the cell still waits, and the cell ends with TaskCancelledError.
"""

from __future__ import annotations

import pytest
from helpers import wait_until
from lab_helpers import Lab, notebook_json, screenshot

pytestmark = pytest.mark.integration

CELLS = [
    """import time
import numpy as np

@cellfleet.remote
def nap(seconds):
    time.sleep(seconds)

@cellfleet.remote
def blob(n):
    return b"y" * n""",
    """data = cellfleet.put(b"x" * 400_000)
box = cellfleet.put([data])
array_ref = cellfleet.put(np.ones(40_000))
array = cellfleet.get(array_ref)
result = blob.remote(300_000)
cellfleet.get(result)
slow = nap.remote(600)""",
    """try:
    cellfleet.get(slow)
except cellfleet.exceptions.TaskCancelledError as exc:
    print("ended:", type(exc).__name__)""",
]
SHOWN = ".jp-NotebookPanel:not(.lm-mod-hidden)"


def _rows(page) -> dict[str, str]:
    """The objects page's largest objects: object id -> the row's text."""
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll(
        '#largest tr')].slice(1).map(r => [r.querySelector('code').title, r.innerText]))""")


def test_objects_and_cancel_through_the_notebook_kernel(lab: Lab, browser):
    page, errors = browser
    (lab.root / "work.ipynb").write_text(notebook_json(CELLS))
    page.goto(lab.url("lab/tree/work.ipynb"))  # logs in: the dashboard uses the cookie
    kid = wait_until(lambda: lab.kernel_id("work.ipynb"), timeout=30,
                     message="the notebook's kernel")
    page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')",
                           timeout=30_000)
    # not awaited: the last cell waits until the task is cancelled
    page.evaluate("() => { jupyterapp.commands.execute('notebook:run-all-cells'); }")

    def cluster():
        found = lab.get("cellfleet/api/clusters") or {"clusters": []}
        return next((c for c in found["clusters"] if c.get("kernel_id") == kid), None)

    cid = wait_until(cluster, timeout=60, message="the kernel's cluster")["id"]
    api = f"cellfleet/api/clusters/{cid}/"

    def slow_running():
        tasks = (lab.get(api + "tasks?name=nap&state=RUNNING") or {}).get("tasks") or []
        return tasks[0]["task_id"] if tasks else None

    slow = wait_until(slow_running, timeout=60, message="the long task running")

    context = page.context.browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_cookies(page.context.cookies())  # Jupyter's login, as Lab's panels have it
    dash = context.new_page()
    dash.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    dash.on("console", lambda msg: errors.append(f"console: {msg.text}")
            if msg.type == "error" else None)
    base = f"{lab.base}cellfleet/dashboard/{cid}/"
    dash.goto(base + "objects")  # no token in the address: Jupyter's login cookie

    def objects_shown():
        rows = _rows(dash)
        texts = " | ".join(rows.values())
        return rows if ("put at In [2], line 1" in texts and "blob() returned it" in texts
                        and "zero-copy value" in texts) else None

    rows = wait_until(objects_shown, timeout=30, message="the objects with their references")
    data_row = next(t for t in rows.values() if "line 1" in t)
    assert "ref" in data_row and "in an object" in data_row and "work.ipynb" in data_row
    array_row = next(t for t in rows.values() if "line 3" in t)
    assert "zero-copy value" in array_row and "ref" in array_row
    returned = next(t for t in rows.values() if "blob() returned it" in t)
    assert "292.97 KiB" in returned or "293 KiB" in returned, returned
    screenshot(dash, "page-objects-refs-light")
    dash.goto(base + "objects?theme=dark")
    wait_until(objects_shown, timeout=30, message="the objects page in the dark theme")
    screenshot(dash, "page-objects-refs-dark")

    # a POST with the cookie but without Jupyter's XSRF token is refused
    refused = dash.evaluate("""async (tid) => (await fetch(window.CELLFLEET.api + 'cancel', {
        method: 'POST', credentials: 'same-origin', body: JSON.stringify({task_id: tid})
        })).status""", slow)
    assert refused == 403
    # the graph page's details panel cancels the running task through the kernel
    dash.goto(base + "graph")
    node = dash.locator(f".cf-node.cf-task[data-id='{slow}']")
    node.wait_for(timeout=30_000)
    node.click()
    button = dash.locator(".cf-details .cf-cancel")
    button.wait_for(state="visible", timeout=10_000)
    button.click()
    dash.locator("#notice", has_text="cancelled task").wait_for(timeout=15_000)
    dash.locator(f".cf-node.cf-task[data-id='{slow}'][data-cancelled='1']").wait_for(
        timeout=30_000)
    details = dash.locator(".cf-details").inner_text()
    assert "TaskCancelledError" in details and "In [2]" in details, details  # its cell's name
    screenshot(dash, "page-graph-cancelled")
    output = page.locator(f"{SHOWN} .jp-Cell:nth-child(3) .jp-OutputArea-output")
    output.wait_for(timeout=30_000)
    assert "ended: TaskCancelledError" in output.inner_text()

    # the overview's recent tasks say it was cancelled
    dash.goto(base)
    dash.locator("#recent .pill", has_text="cancelled").wait_for(timeout=15_000)
    dash.locator("#recent td", has_text="In [2]").first.wait_for(timeout=15_000)
    screenshot(dash, "page-overview-recent")
    # a task nobody of this server submitted cannot be cancelled: the answer says why
    answer = dash.evaluate("""async () => { const r = await fetch(window.CELLFLEET.api +
        'cancel', {method: 'POST', credentials: 'same-origin',
        headers: {'X-XSRFToken': window.CELLFLEET.xsrf},
        body: JSON.stringify({task_id: '0'.repeat(32)})});
        return [r.status, (await r.json()).error]; }""")
    assert answer[0] == 409 and "not held here" in answer[1], answer
    ours = [e for e in errors if "cellfleet" in e.lower() or "cf-" in e]
    assert not ours, ours
