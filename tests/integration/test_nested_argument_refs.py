"""A task handed an object both as an argument and nested inside another argument: its ``get``
of the nested ref has the value at once, asks nobody, and keeps the task's CPU (in Ray the
object is in the local store already)."""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

import cellfleet

pytestmark = pytest.mark.integration
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@cellfleet.remote
def make_list() -> list:
    return [1] * (1 << 20)  # stored in shared memory


@cellfleet.remote
def get_the_nested_copy(value: list, box: list) -> int:
    assert cellfleet.get(box[0]) == value  # the same object, handed as an argument too
    return os.getpid()


@cellfleet.remote
def pid_of(value: list) -> int:
    return os.getpid()


def test_a_get_of_a_nested_ref_also_handed_as_an_argument_keeps_the_cpu(fresh_cluster) -> None:
    fresh_cluster(num_cpus=1)
    made = make_list.remote()
    first = get_the_nested_copy.remote(made, [made])
    second = pid_of.remote(made)  # another worker only if the first lent its CPU in its get
    assert len(set(cellfleet.get([first, second], timeout=60))) == 1
