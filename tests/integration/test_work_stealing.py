"""Tasks pipelined behind a call that turned out long are taken back and run elsewhere."""

from __future__ import annotations

import os
import sys
import time

import cloudpickle
import pytest

import cellfleet as ray

pytestmark = pytest.mark.integration
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@ray.remote
def pid_after(seconds: float = 0.0) -> int:
    time.sleep(seconds)  # the workload: a call whose length changes
    return os.getpid()


def test_calls_queued_behind_a_long_call_of_a_short_function_spread_out(fresh_cluster):
    fresh_cluster(num_cpus=4)
    ray.get([pid_after.remote() for _ in range(200)])  # the function proves short
    pids = ray.get([pid_after.remote(0.5) for _ in range(4)], timeout=60)
    assert len(set(pids)) >= 3, f"four long calls ran in {len(set(pids))} worker(s): {pids}"


def test_short_calls_still_come_back_in_full_after_a_steal(fresh_cluster):
    fresh_cluster(num_cpus=2)
    ray.get([pid_after.remote() for _ in range(100)])
    refs = [pid_after.remote(0.05 if i % 10 == 0 else 0.0) for i in range(300)]
    assert len(ray.get(refs, timeout=60)) == 300  # each exactly once, none lost in a steal
