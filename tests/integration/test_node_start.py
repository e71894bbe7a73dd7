"""A node's start: the raylet forks its worker template early, and the template holds nothing
of the raylet's (its port, its session lock), names itself, and ends with the raylet, as
its workers do."""

from __future__ import annotations

import os
import signal

import psutil
import pytest
from helpers import wait_until

import cellfleet as ray
from cellfleet.cluster_utils import Cluster

pytestmark = pytest.mark.integration


@ray.remote(resources={"joined": 1})
def pid() -> int:
    return os.getpid()


def test_a_forked_template_holds_nothing_of_the_raylet_and_ends_with_it() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        ray.init(address=cluster.address)
        ref = pid.remote()  # fits no node until the next one joins
        node = cluster.add_node(num_cpus=1, resources={"joined": 1})
        worker = ray.get(ref, timeout=60)
        raylet = psutil.Process(node._processes.processes[0].pid)
        (template,) = raylet.children()
        command = " ".join(template.cmdline())
        assert "-m cellfleet.raylet.forkserver" in command and node.session_dir in command
        assert worker in {p.pid for p in template.children()}
        assert not [c for c in template.net_connections() if c.status == psutil.CONN_LISTEN]
        held = {os.path.realpath(f.path) for f in template.open_files()}
        assert not any(path.startswith(node.session_dir) and "worker-template.log" not in path
                       for path in held), held  # not the session's lock
        assert any(path.startswith(node.session_dir) for path in
                   {os.path.realpath(f.path) for f in raylet.open_files()})  # what it would
        processes = [template, psutil.Process(worker)]
        os.kill(raylet.pid, signal.SIGKILL)
        wait_until(lambda: not any(_running(p) for p in processes), timeout=10,
                   message="the template and its worker to end with the raylet")
    finally:
        ray.shutdown()
        cluster.shutdown()


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
