"""A worker that stops answering while it owes results (SIGSTOP, a hung host) is noticed.

Task pushes and results are one-way messages; a connection that owes results counts as
awaiting answers, so the owner pings a silent worker and drops it once the keepalive bound
passes (``_connection_state``: 5 s idle, then 10 s for the pong). The task is then retried on
another worker like any task whose worker died, and an actor call fails with ActorDiedError.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import sys
import time

import cloudpickle
import pytest
from gates import touch, wait_for_file

import cellfleet as ray
from cellfleet import exceptions

pytestmark = pytest.mark.integration
cloudpickle.register_pickle_by_value(sys.modules[__name__])

DETECTION_S = 15.0  # the keepalive bound the owner works by


@ray.remote(max_retries=1)
def first_attempt_hangs(gate: str) -> int:
    if not os.path.exists(gate + ".tried"):
        touch(gate + ".tried")
        touch(gate + f".pid{os.getpid()}")
        wait_for_file(gate, timeout=600)  # never: the test pauses this worker meanwhile
    return os.getpid()


@ray.remote
class Holder:
    def pid(self) -> int:
        return os.getpid()

    def wait(self, gate: str) -> None:
        wait_for_file(gate, timeout=600)


def pid_from(gate: str, timeout: float = 30.0) -> int:
    """The pid the task wrote beside its gate."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = glob.glob(gate + ".pid*")
        if found:
            return int(found[0].rsplit("pid", 1)[1])
        time.sleep(0.05)  # polling a file with a deadline
    raise AssertionError("the task did not start")


def test_a_paused_worker_s_task_is_retried_elsewhere(fresh_cluster, tmp_path):
    fresh_cluster(num_cpus=2)
    gate = str(tmp_path / "gate")
    ref = first_attempt_hangs.remote(gate)
    paused = pid_from(gate)
    os.kill(paused, signal.SIGSTOP)
    try:
        assert ray.get(ref, timeout=DETECTION_S + 30) != paused
    finally:
        with contextlib.suppress(ProcessLookupError):  # its raylet may have stopped it
            os.kill(paused, signal.SIGKILL)


def test_a_paused_actor_s_call_fails_with_actor_died(fresh_cluster, tmp_path):
    fresh_cluster(num_cpus=2)
    actor = Holder.remote()
    pid = ray.get(actor.pid.remote(), timeout=30)
    call = actor.wait.remote(str(tmp_path / "never"))
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(exceptions.ActorDiedError):
            ray.get(call, timeout=DETECTION_S + 30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
