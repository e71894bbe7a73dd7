"""The widget on a real cluster: fed by the GCS's pushes, cancel from the panel, no cluster."""

from __future__ import annotations

import time

import pytest
from helpers import wait_until

import cellfleet
from cellfleet.widgets import NoClusterError, TaskGraph

pytestmark = pytest.mark.integration


@cellfleet.remote
def square(x):
    return x * x


@cellfleet.remote
def sleepy():
    time.sleep(30)


def test_no_cluster_says_how_to_start_one():
    if cellfleet.is_initialized():
        cellfleet.shutdown()
    with pytest.raises(NoClusterError, match=r"cellfleet.init\(\)"):
        TaskGraph()


def test_widget_follows_tasks_and_cancels_from_the_panel(cluster):
    widget = TaskGraph(scope="notebook", interval=0.1)
    try:
        refs = [square.remote(i) for i in range(4)]
        assert cellfleet.get(refs) == [0, 1, 4, 9]
        wait_until(lambda: widget.view.get("legend", {}).get("FINISHED", 0) >= 4, timeout=10,
                   message="the finished tasks in the widget's view")
        assert {n["label"] for n in widget.view["nodes"]} >= {"square"}
        sent = []
        widget.send = sent.append  # what the frontend would receive
        widget._on_frontend_msg(widget, {"type": "hello"}, [])
        assert sent == [{"type": "hello"}]

        slow = sleepy.remote()
        wait_until(lambda: any(n["id"] == slow.task_id() and n["state"] == "RUNNING"
                               for n in widget.view["nodes"]), timeout=10,
                   message="the sleeping task running in the view")
        widget._on_frontend_msg(widget, {"type": "cancel", "task": slow.task_id()}, [])
        with pytest.raises(cellfleet.exceptions.TaskCancelledError):
            cellfleet.get(slow, timeout=10)
    finally:
        widget.close()
