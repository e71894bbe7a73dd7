"""What a driver tells the views as an owner (``widgets/owner.py``) and how the kernel's
control channel answers (``kernel/control.py``), on a real cluster."""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import wait_until

import cellfleet
from cellfleet.kernel.control import answer
from cellfleet.widgets.feed import label_cell

pytestmark = pytest.mark.integration


@cellfleet.remote
def sleepy(seconds):
    time.sleep(seconds)


@cellfleet.remote
def use(x):
    time.sleep(30)


def _row(rows: list[dict], ref) -> dict:
    return next(r for r in rows if r["object_id"] == ref.hex())


def test_reference_types_of_owned_objects(cluster):
    data = cellfleet.put(b"x" * 300_000)
    box = cellfleet.put([data])
    array_ref = cellfleet.put(np.ones(50_000))
    array = cellfleet.get(array_ref)
    taking = use.remote(data)
    reply = answer({"op": "objects", "gcs": cluster["gcs_address"]})
    assert reply["status"] == "ok"
    rows = reply["objects"]
    assert _row(rows, data)["references"] == {
        "LOCAL_REFERENCE": 1, "USED_BY_PENDING_TASK": 1, "CAPTURED_IN_OBJECT": 1}
    assert _row(rows, data)["where"] == "shared_memory" and _row(rows, data)["size"] > 300_000
    assert _row(rows, array_ref)["references"] == {"LOCAL_REFERENCE": 1, "PINNED_IN_MEMORY": 1}
    assert _row(rows, box)["source"] == "put" and _row(rows, taking)["source"] == "task"
    assert _row(rows, taking)["task"] == "use" and _row(rows, taking)["where"] == "pending"
    sizes = [r["size"] or 0 for r in rows]
    assert sizes == sorted(sizes, reverse=True)
    del array  # the zero-copy value gone: nothing pins it any more
    wait_until(lambda: "PINNED_IN_MEMORY" not in _row(
        answer({"op": "objects"})["objects"], array_ref)["references"], timeout=5,
        message="the pin released")
    assert answer({"op": "cancel", "task_id": taking.task_id()}) == {"status": "ok"}
    with pytest.raises(cellfleet.exceptions.TaskCancelledError):
        cellfleet.get(taking, timeout=10)


def test_cancel_requests_and_their_errors(cluster):
    ref = sleepy.remote(30)
    assert answer({"op": "cancel", "task_id": "zz"})["status"] == "error"
    assert answer({"op": "cancel", "task_id": "0" * 32})["status"] == "not_owner"
    other = answer({"op": "cancel", "task_id": ref.task_id(), "gcs": "127.0.0.1:1"})
    assert other["status"] == "other_cluster"
    assert "unknown request" in answer({"op": "drop tables"})["error"]
    label_cell("cell-tag-1", "In [9]")
    assert answer({"op": "cells", "tags": ["cell-tag-1", "unknown"]}) == {
        "status": "ok", "cells": {"cell-tag-1": "In [9]"}}
    assert answer({"op": "cancel", "task_id": ref.task_id(), "gcs": cluster["gcs_address"]}) \
        == {"status": "ok"}
    with pytest.raises(cellfleet.exceptions.TaskCancelledError):
        cellfleet.get(ref, timeout=10)
