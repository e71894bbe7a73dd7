"""The graph component (the widget's and the dashboard's ES module) in headless Chromium,
fed a view the model built: a collapsed group replays its members' states on the slider."""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cellfleet.widgets.assets import css_source, esm_source
from cellfleet.widgets.model import SHORT, GraphModel, state_at

CHROMIUM = os.environ.get("CELLFLEET_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no chromium at {CHROMIUM}")
sync_api = pytest.importorskip("playwright.sync_api")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
REPLAY_ORDER = ("RUNNING", "FINISHED", "FAILED", "SUBMITTED_TO_WORKER",
                "PENDING_NODE_ASSIGNMENT", "PENDING_ARGS_AVAIL")  # as the label lists them
JS_SHORT = dict(SHORT, PENDING_ARGS_AVAIL="waiting for args")  # as static/taskgraph.js says


def _model() -> GraphModel:
    """20 ``stage1`` tasks submitted 0.1 s apart, each running 1 s; 3 ``other`` tasks."""
    model = GraphModel("all", max_nodes=5)
    events = []
    for i in range(23):
        tid = f"{i:032x}"
        t = 1.0 + 0.1 * i
        name = "stage1" if i < 20 else "other"
        events += [[bytes.fromhex(tid), "PENDING_ARGS_AVAIL", t, {"name": name,
                                                                  "returns": [tid + "01"]}],
                   [bytes.fromhex(tid), "RUNNING", t + 0.05, {}],
                   [bytes.fromhex(tid), "FINISHED", t + 1.0, {}]]
    model.add_events(events)
    return model


@contextlib.contextmanager
def _graph_page(view: dict, width: int, height: int) -> Iterator[tuple[Any, list[str]]]:
    """Headless Chromium drawing ``view`` with the graph component; (page, page errors)."""
    page_html = ("<!DOCTYPE html><html><head><style>" + css_source() + "</style></head>"
                 f"<body><div id='g' style='height:{height}px;width:{width}px'></div></body>"
                 "</html>")
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.set_content(page_html)
            page.add_script_tag(type="module", content=esm_source() +
                                "\nwindow.cfCreateGraph = createGraph;")
            page.wait_for_function("window.cfCreateGraph !== undefined")
            page.evaluate("""(view) => { window.cfGraph = window.cfCreateGraph(
                document.getElementById('g'), {send() {}, expand() {}, live: () => true});
                window.cfGraph.draw(view); }""", view)
            yield page, errors
        finally:
            browser.close()


def test_a_collapsed_group_replays_its_members_states():
    model = _model()
    view = model.view()
    (group,) = [n for n in view["nodes"] if n["id"] == "g:stage1"]
    assert group["kind"] == "group" and len(group["replay"]) == 20
    with _graph_page(view, 900, 420) as (page, errors):
        node = page.locator(".cf-node[data-id='g:stage1']")
        assert "20 done" in node.text_content()
        for value in (0, 250, 500, 900):
            page.evaluate("""(v) => { const s = document.querySelector('.cf-slider');
                s.value = String(v); s.dispatchEvent(new Event('input')); }""", value)
            t = view["t0"] + (view["t1"] - view["t0"]) * value / 1000
            counts = Counter(state_at(model.records[f"{i:032x}"], t) for i in range(20))
            later = counts.pop(None, 0)
            expected = [f"{counts[s]} {JS_SHORT[s]}" for s in REPLAY_ORDER if counts[s]]
            if later:
                expected.append(f"{later} not yet")
            assert node.get_attribute("data-replay") == " · ".join(expected), value
            if value == 500:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "widget-group-replay.png"))
        # back to live: the group's own counts again
        page.evaluate("""() => { const s = document.querySelector('.cf-slider');
            s.value = '1000'; s.dispatchEvent(new Event('input')); }""")
        assert node.get_attribute("data-replay") == "" and "20 done" in node.text_content()
    assert errors == [], errors
    assert json.dumps(view)  # what the widget syncs stays JSON


def test_a_chaos_fault_is_drawn_apart_from_the_tasks():
    model = GraphModel("all")
    model.add_events([
        [bytes.fromhex("aa" * 16), "FINISHED", 2.0, {"name": "work", "start_time": 1.0,
                                                     "end_time": 2.0}],
        [bytes.fromhex("bb" * 16), "FINISHED", 1.6, {"name": "chaos kill-node", "type": "FAULT",
                                                     "start_time": 1.5, "end_time": 1.6}],
    ])
    with _graph_page(model.view(), 700, 300) as (page, errors):
        fault = page.locator(".cf-node.cf-fault")
        assert fault.count() == 1 and "chaos kill-node" in fault.text_content()
        assert page.locator(".cf-node.cf-fault[data-id='" + "aa" * 16 + "']").count() == 0
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "widget-fault.png"))
    assert errors == [], errors
