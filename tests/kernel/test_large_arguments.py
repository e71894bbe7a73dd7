"""A large value passed to a task by value gets one suggestion to put() it (real cluster)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import cellfleet
from cellfleet.remote_function import LARGE_ARGUMENT_BYTES

pytestmark = pytest.mark.integration


@cellfleet.remote
def size_of(value) -> int:
    return len(value)


def test_a_large_argument_warns_once_per_function(cluster) -> None:
    big = np.zeros(LARGE_ARGUMENT_BYTES // 8 + 1)
    with pytest.warns(UserWarning, match=r"argument 0 \(numpy.ndarray, 0.10 GB\) is passed by "
                                         r"value.*cellfleet.put\(value\)") as caught:
        assert cellfleet.get(size_of.remote(big)) == len(big)
    assert caught[0].filename == __file__  # points at the .remote() call
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cellfleet.get(size_of.remote(big)) == len(big)  # once per function
        assert cellfleet.get(size_of.options(name="again").remote(big)) == len(big)
        ref = cellfleet.put(big)
        assert cellfleet.get(size_of.remote(ref)) == len(big)  # by reference: no warning


def test_small_arguments_do_not_warn(cluster) -> None:
    @cellfleet.remote
    def echo(*args, **kwargs):
        return len(args) + len(kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cellfleet.get(echo.remote(1, "x" * 1000, np.zeros(10), key=b"y")) == 4
