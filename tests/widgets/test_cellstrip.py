"""The per-cell strip on a real cluster, driven as the kernel drives it."""

from __future__ import annotations

import time

import pytest
from helpers import wait_until

import cellfleet
from cellfleet.core.core_worker import submission_tag
from cellfleet.kernel.cellstrip import CellStrips

pytestmark = pytest.mark.integration


@cellfleet.remote
def quick(x):
    return x + 1


def test_a_cell_that_ends_before_its_task_events_arrive_gets_its_summary(cluster):
    """The cell runs past ``after`` (its strip watches, nothing to show yet), then submits a
    quick task and ends at once: the task's events come after the end, and the summary is a
    new output under the cell."""
    shown: list[tuple[str, dict, dict]] = []
    strips = CellStrips(lambda kind, content, parent: shown.append((kind, content, parent)),
                        after=0.3)
    tag = f"cell-{time.time_ns()}"
    parent = {"header": {"msg_id": tag}}
    token = submission_tag.set(tag)
    try:
        strips.cell_started(tag, parent, "In [7]")
        wait_until(lambda: strips._strips[tag].listener is not None, timeout=10,
                   message="the strip to watch the cell")
        assert cellfleet.get(quick.remote(1)) == 2
        strips.cell_finished(tag)
    finally:
        submission_tag.reset(token)
    wait_until(lambda: tag not in strips._strips, timeout=10, message="the strip to settle")
    ((kind, content, got_parent),) = shown
    assert kind == "display_data" and got_parent is parent
    assert content["data"]["text/plain"].startswith("cellfleet: 1 tasks (quick ×1) in ")
    assert "cellfleet-strip-summary" in content["data"]["text/html"]


def test_a_long_cell_without_tasks_shows_nothing(cluster):
    shown: list[str] = []
    strips = CellStrips(lambda kind, content, parent: shown.append(kind), after=0.2)
    tag = f"cell-{time.time_ns()}"
    strips.cell_started(tag, {"header": {}})
    wait_until(lambda: strips._strips[tag].listener is not None, timeout=10,
               message="the strip to watch the cell")
    strips.cell_finished(tag)
    wait_until(lambda: tag not in strips._strips, timeout=10, message="the strip to settle")
    assert shown == []
