"""GPU ids on a real node: each lease gets its own, seen through CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

import cellfleet as ray

pytestmark = pytest.mark.integration

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this file


@ray.remote(num_gpus=1)
class GpuHolder:
    def ids(self) -> tuple[list[int], str | None]:
        return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")


@ray.remote(num_gpus=1)
def whole_gpu() -> tuple[list[int], str | None]:
    return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")


@ray.remote(num_gpus=0)
def no_gpu() -> tuple[list[int], str | None]:
    return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_two_gpu_actors_on_a_two_gpu_node_get_different_ids(fresh_cluster) -> None:
    fresh_cluster(num_cpus=2, num_gpus=2)
    a, b = GpuHolder.remote(), GpuHolder.remote()
    (ids_a, env_a), (ids_b, env_b) = ray.get([a.ids.remote(), b.ids.remote()], timeout=30)
    assert sorted(ids_a + ids_b) == [0, 1]
    assert env_a == str(ids_a[0]) and env_b == str(ids_b[0])
    # Both GPUs are held by the actors; once one goes, a task gets its id.
    ray.kill(a)
    ids, env = ray.get(whole_gpu.remote(), timeout=30)
    assert ids == ids_a and env == str(ids_a[0])
    assert ray.get(no_gpu.remote(), timeout=30)[0] == []
