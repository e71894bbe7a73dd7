"""Node resources as Ray's tests use them: GPU and CPU work kept in separate workers, and the
node's ``memory`` resource from ``init(_memory=...)``. Each test starts its own cluster."""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

import cellfleet as ray

pytestmark = pytest.mark.integration
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@ray.remote(num_gpus=1)
def on_gpu() -> tuple[int, str | None]:
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


@ray.remote
def on_cpu() -> tuple[int, str | None]:
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_gpu_and_cpu_tasks_never_share_a_worker(fresh_cluster) -> None:
    fresh_cluster(num_cpus=1, num_gpus=1)
    cpu_pid, _ = ray.get(on_cpu.remote(), timeout=60)
    gpu_pid, devices = ray.get(on_gpu.remote(), timeout=60)
    assert gpu_pid != cpu_pid and devices == "0"
    for _ in range(3):  # each kind goes back to its own worker
        assert ray.get(on_cpu.remote(), timeout=60) == (cpu_pid, None)
        assert ray.get(on_gpu.remote(), timeout=60) == (gpu_pid, "0")


@ray.remote
def noop() -> str:
    return "ran"


def test_init_memory_sets_the_nodes_memory_resource_in_whole_bytes(fresh_cluster) -> None:
    fresh_cluster(num_cpus=1, _memory=2.2)
    assert ray.cluster_resources()["memory"] == 2.0
    assert ray.get(noop.options(memory=2.9).remote(), timeout=30) == "ran"  # 2 bytes
    assert ray.get(noop.options(memory=0.5).remote(), timeout=30) == "ran"  # none at all


def test_init_memory_must_be_a_number_of_bytes() -> None:
    with pytest.raises(ValueError, match="_memory must be a non-negative number"):
        ray.init(num_cpus=1, _memory=-1)
    assert not ray.is_initialized()
