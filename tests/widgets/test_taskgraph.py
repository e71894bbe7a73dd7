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
def blob(n):
    return b"x" * n


@cellfleet.remote
def length(data):
    return len(data)


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

        # the owner reports each return's size: inline and in shared memory
        small, big = blob.remote(10), blob.remote(2_000_000)
        assert cellfleet.get([length.remote(small), length.remote(big)]) == [10, 2_000_000]

        def sized() -> list | None:
            nodes = {n["id"]: n for n in widget.view["nodes"]}
            sizes = [nodes.get(r.task_id(), {}).get("return_sizes") for r in (small, big)]
            return sizes if all(sizes) else None

        small_size, big_size = wait_until(sized, timeout=10, message="the blobs' sizes")
        assert 10 < small_size[0] < 200 and 2_000_000 < big_size[0] < 2_001_000
        edges = [e for e in widget.view["edges"] if e["kind"] == "data"]
        assert sorted(e["bytes"] for e in edges) == sorted([small_size[0], big_size[0]])
        readers = [n for n in widget.view["nodes"] if n["label"] == "length"]
        assert sorted(n["arg_sizes"][0] for n in readers) == sorted([small_size[0], big_size[0]])
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
