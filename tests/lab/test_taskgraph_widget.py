"""The task-graph widget in a real JupyterLab with the cellfleet kernel, driven by Chromium.

A notebook runs a real workload (fan-out, fan-in, nested tasks, an actor, a failing task) in a
cell long enough for its live strip, shows ``%taskgraph`` and a grouped ``TaskGraph``; the
test clicks through them, cancels a running task from its details panel, saves the notebook,
and reopens it with no kernel: the outputs still show the graphs (the pictures the widgets
kept).
"""

from __future__ import annotations

import base64
import json
import re

import pytest
from helpers import wait_until
from lab_helpers import Lab, notebook_json, screenshot

pytestmark = pytest.mark.integration

CELLS = [
    """import time
from cellfleet.widgets import TaskGraph

@cellfleet.remote
def load(i):
    time.sleep(0.05)
    return list(range(i))

@cellfleet.remote
def stage1(x):
    return sum(x)

@cellfleet.remote
def combine(*xs):
    return sum(xs)

@cellfleet.remote
def outer(n):
    return cellfleet.get([stage1.remote(list(range(k))) for k in range(n)])

@cellfleet.remote
def nap(seconds):
    time.sleep(seconds)

@cellfleet.remote
def boom(x):
    raise ValueError(f"bad input {x}")

@cellfleet.remote
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self, k):
        self.n += k
        return self.n""",
    """cellfleet.get(nap.remote(4))  # long enough for the cell's live strip, even under load
parts = [stage1.remote(load.remote(i)) for i in range(6)]
total = combine.remote(*parts)
nested = outer.remote(3)
counter = Counter.remote()
calls = [counter.incr.remote(k) for k in range(3)]
bad = boom.remote(7)
print(cellfleet.get(total), cellfleet.get(nested), cellfleet.get(calls))""",
    "%taskgraph",
    "TaskGraph(max_nodes=5, height=300)",
    "",  # CANCEL, run once the graphs above have settled
    "",  # CANCELLED, run once the task was cancelled from the graph
]
CANCEL = """slow = nap.remote(600)  # cancelled from the graph's details panel
TaskGraph(scope="cell", height=220)"""
CANCELLED = """try:
    cellfleet.get(slow, timeout=30)
except cellfleet.exceptions.TaskCancelledError as exc:
    print("ended:", type(exc).__name__)"""


def _run_cell(page, index: int, code: str) -> None:
    """Put ``code`` into the notebook's cell ``index`` and run it."""
    page.evaluate("""([index, code]) => { const notebook = jupyterapp.shell.currentWidget.content;
                       notebook.widgets[index].model.sharedModel.setSource(code);
                       notebook.activeCellIndex = index; }""", [index, code])
    page.evaluate("jupyterapp.commands.execute('notebook:run-cell')")

SHOWN = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the active notebook (others stay in the DOM)
FIRST = f"{SHOWN} .jp-Cell:nth-child(3) .cf-graph"
SECOND = f"{SHOWN} .jp-Cell:nth-child(4) .cf-graph"
THIRD = f"{SHOWN} .jp-Cell:nth-child(5) .cf-graph"


def _settled(page, graph: str, tasks: int) -> bool:
    """Every task drawn has ended, and the output holds the picture of that."""
    return page.evaluate(
        """([sel, n]) => { const g = document.querySelector(sel);
             if (!g || !g.closest('[data-pictured]')) return false;
             const nodes = [...g.querySelectorAll('.cf-node.cf-task')];
             return nodes.length >= n && nodes.every(e => ['FINISHED', 'FAILED']
               .includes(e.dataset.state)); }""", [graph, tasks])


def test_widget_draws_clicks_expands_and_survives_without_kernel(lab: Lab, browser):
    page, errors = browser
    (lab.root / "graph.ipynb").write_text(notebook_json(CELLS))
    page.goto(lab.url("lab/tree/graph.ipynb"))
    kid = wait_until(lambda: lab.kernel_id("graph.ipynb"), timeout=30,
                     message="the notebook's kernel")
    page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')",
                           timeout=30_000)
    page.evaluate("jupyterapp.commands.execute('notebook:run-all-cells')")
    # the long cell shows its live strip, then a one-line summary in its place
    work = page.locator(f"{SHOWN} .jp-Cell:nth-child(2)")
    work.locator(".cellfleet-strip").wait_for(timeout=30_000)
    assert "nap × 1" in work.locator(".cellfleet-strip").inner_text()
    summary = work.locator(".cellfleet-strip-summary")
    summary.wait_for(timeout=30_000)
    assert work.locator(".cellfleet-strip").count() == 0
    assert "cellfleet: 23 tasks" in summary.inner_text() and "1 failed" in summary.inner_text()
    # nap, load ×6, stage1 ×6 + 3 nested, combine, outer, the actor and 3 calls, boom: 23
    wait_until(lambda: _settled(page, FIRST, 23), timeout=60,
               message="the graph of the workload, every task ended")
    graph = page.locator(FIRST)
    screenshot(page, "widget-graph")
    labels = graph.locator(".cf-node.cf-task text").all_text_contents()
    for name in ("nap", "load", "stage1", "combine", "outer", "boom", "Counter.incr"):
        assert name in labels, labels
    assert graph.locator(".cf-actor").count() == 1  # the actor's box holds its calls
    assert graph.locator(".cf-edge.cf-data").count() >= 12
    assert graph.locator(".cf-edge.cf-child").count() >= 3  # outer -> its nested stage1s
    assert "failed 1" in graph.locator(".cf-legend").inner_text()

    # the failing task's details: function, node, worker, the error
    cluster = next(c for c in lab.get("cellfleet/api/clusters")["clusters"]
                   if c.get("kernel_id") == kid)
    (node,) = lab.get(f"cellfleet/api/clusters/{cluster['id']}/nodes")["nodes"]
    graph.locator(".cf-node.cf-task[data-state=FAILED]").click()
    details = graph.locator(".cf-details")
    details.wait_for(state="visible", timeout=5_000)
    text = details.inner_text()
    assert text.startswith("×\nboom"), text
    assert node["node_id"][:12] in text and "worker pid" in text
    assert "ValueError: bad input 7" in text

    # the lineage of combine: its six stage1 and six load tasks
    graph.locator(".cf-node.cf-task", has_text="combine").click()
    wait_until(lambda: graph.locator(".cf-node.cf-up").count() == 12, timeout=5,
               message="combine's lineage highlighted")
    assert "combine" in details.inner_text()
    # each argument with its size, and the size of what it returned (reported by the owner)
    assert len(re.findall(r"· \d+ B", details.inner_text())) == 6, details.inner_text()
    assert re.search(r"returns\s+\d+ B", details.inner_text()), details.inner_text()
    screenshot(page, "widget-details")

    # the slider replays: at the start nothing was submitted yet, at the end all is live again
    slider = graph.locator(".cf-slider")
    slider.fill("0")
    assert graph.locator(".cf-node.cf-task:not(.cf-future)").count() <= 1  # the first one
    assert graph.locator(".cf-clock").inner_text().startswith("+")
    slider.fill("1000")
    assert graph.locator(".cf-node.cf-task.cf-future").count() == 0
    assert graph.locator(".cf-clock").inner_text() == "live"

    # the grouped graph: a group node opens on click
    second = page.locator(SECOND)
    group = second.locator('.cf-node.cf-group[data-id="g:stage1"]')
    group.wait_for(timeout=15_000)
    assert "stage1 × 9 · 9 done" in group.text_content()
    group.scroll_into_view_if_needed()
    group.click()
    wait_until(lambda: second.locator(".cf-node.cf-task").count() == 9, timeout=10,
               message="the group's 9 tasks drawn")
    assert "stage1 ▾" in second.locator(".cf-opened").inner_text()
    screenshot(page, "widget-group-open")

    # a running task is cancelled from its details panel: it ends cancelled
    _run_cell(page, 4, CANCEL)
    third = page.locator(THIRD)
    running = third.locator(".cf-node.cf-task[data-state=RUNNING]")
    running.wait_for(timeout=30_000)
    running.scroll_into_view_if_needed()
    running.click()
    cancel = third.locator(".cf-details .cf-cancel")
    cancel.wait_for(state="visible", timeout=5_000)
    cancel.click()
    third.locator(".cf-node.cf-task[data-state=FAILED]").wait_for(timeout=30_000)
    wait_until(lambda: third.locator(".cf-details .cf-cancel").count() == 0, timeout=10,
               message="the ended task's panel without its Cancel button")
    _run_cell(page, 5, CANCELLED)
    output = page.locator(f"{SHOWN} .jp-Cell:nth-child(6) .jp-OutputArea-output")
    output.wait_for(timeout=30_000)
    assert "ended: TaskCancelledError" in output.inner_text()
    screenshot(page, "widget-cancelled")

    # saved with its widget state, reopened with no kernel: still drawn
    page.evaluate("jupyterapp.commands.execute('docmanager:save')")

    def saved():
        notebook = json.loads((lab.root / "graph.ipynb").read_text())
        state = notebook["metadata"].get("widgets", {}).get(
            "application/vnd.jupyter.widget-state+json", {}).get("state", {})
        views = [m["state"].get("view") for m in state.values()
                 if m.get("model_name") == "AnyModel"]
        return notebook if sum(1 for v in views if v and v.get("nodes")) >= 2 else None

    notebook = wait_until(saved, timeout=15, message="the widget state saved")
    # beside the widget, each output keeps a picture of it for where no widget can be drawn
    pictures = [o["data"]["image/png"] for cell in notebook["cells"]
                for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(pictures) >= 2
    assert base64.b64decode(pictures[0])[:8] == b"\x89PNG\r\n\x1a\n"
    notebook["metadata"]["kernelspec"] = {"name": "none-installed", "display_name": "none",
                                          "language": "python"}
    (lab.root / "static.ipynb").write_text(json.dumps(notebook))
    page.goto(lab.url("lab/tree/static.ipynb"))
    no_kernel = page.locator(".jp-Dialog button", has_text="No Kernel")
    no_kernel.wait_for(timeout=30_000)
    no_kernel.click()
    page.locator(f"{SHOWN} .jp-Notebook").wait_for(timeout=10_000)
    shown = page.locator(f"{SHOWN} .jp-Cell:nth-child(3) .jp-RenderedImage img")
    shown.wait_for(timeout=15_000)
    shown.scroll_into_view_if_needed()
    assert lab.kernel_id("static.ipynb") is None
    screenshot(page, "widget-no-kernel")
    ours = [e for e in errors if "cf-" in e or "cellfleet" in e.lower() or "anywidget" in e]
    assert not ours, ours
