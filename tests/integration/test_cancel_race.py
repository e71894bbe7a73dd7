"""A cancel that reaches a task after its function has returned is too late: the caller gets
the value, and the result is never lost."""

from __future__ import annotations

import sys
import time

import cloudpickle
import pytest
from helpers import wait_until

import cellfleet
from cellfleet.util.state import list_tasks

pytestmark = pytest.mark.integration
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _rebuild(value: int) -> SlowToPickle:
    return SlowToPickle(value)


class SlowToPickle:
    """A return value whose serialization takes a second: the window after the return."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self):
        time.sleep(1.0)
        return _rebuild, (self.value,)


@cellfleet.remote
def returns_slowly(value: int) -> SlowToPickle:
    return SlowToPickle(value)


def test_a_cancel_after_the_function_returned_keeps_the_value(cluster) -> None:
    ref = returns_slowly.remote(7)
    wait_until(lambda: any(t["state"] == "RUNNING" and t["task_id"] == ref.task_id()
                           for t in list_tasks()), timeout=20, message="the task to run")
    time.sleep(0.4)  # well inside the second its return value takes to serialize
    cellfleet.cancel(ref)
    assert cellfleet.get(ref, timeout=30).value == 7
