"""A full object store spills primary copies nobody reads to disk and reads them back on get."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import wait_until

import cellfleet as ray
from cellfleet import _messages as m
from cellfleet import exceptions

pytestmark = pytest.mark.integration

MiB = 2**20


def store() -> dict:
    core = ray._context.core

    async def ask() -> dict:
        return (await core.raylet.request(m.GetNodeStats()))["store"]

    return core.run(ask(), timeout=10)


def spill_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_puts_beyond_the_store_spill_and_every_value_comes_back(fresh_cluster, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("CELLFLEET_SPILL_DIR", str(tmp_path))
    fresh_cluster(num_cpus=1, object_store_memory=64 * MiB)
    refs = [ray.put(np.full(24 * MiB, i, dtype=np.uint8)) for i in range(14)]  # 5x the store
    figures = store()
    assert figures["spilled"] >= 11 and figures["used"] <= 64 * MiB
    assert len(spill_files(tmp_path)) == figures["spilled"]
    for path in spill_files(tmp_path):  # another local user cannot read what was spilled
        assert path.stat().st_mode & 0o077 == 0 and path.parent.stat().st_mode & 0o077 == 0
    for i, ref in enumerate(refs):  # each read back (spilling others to make room)
        value = ray.get(ref, timeout=60)
        assert value[0] == i and value[-1] == i
        del value
    assert store()["restored_total"] >= 11
    del refs, ref
    wait_until(lambda: not spill_files(tmp_path), message="spill files deleted")
    wait_until(lambda: store()["spilled"] == 0 and store()["used"] == 0,
               message="the store empty")


def test_a_task_return_larger_than_free_memory_waits_for_spilling(fresh_cluster, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("CELLFLEET_SPILL_DIR", str(tmp_path))
    fresh_cluster(num_cpus=1, object_store_memory=64 * MiB)

    @ray.remote
    def make(value: int) -> np.ndarray:
        return np.full(40 * MiB, value, dtype=np.uint8)

    first = ray.put(np.ones(40 * MiB, dtype=np.uint8))
    second = make.remote(2)
    assert ray.get(second, timeout=60)[0] == 2  # the put object went to disk for it
    assert ray.get(first, timeout=60)[0] == 1


def test_when_spilling_fails_too_the_store_full_error_says_so(fresh_cluster, monkeypatch):
    monkeypatch.setenv("CELLFLEET_SPILL_DIR", "/dev/null/cannot-be-a-directory")
    fresh_cluster(num_cpus=1, object_store_memory=64 * MiB)
    kept = ray.put(np.ones(40 * MiB, dtype=np.uint8))
    with pytest.raises(exceptions.ObjectStoreFullError, match="Spilling to .* failed too"):
        ray.put(np.ones(40 * MiB, dtype=np.uint8))
    assert ray.get(kept, timeout=30)[0] == 1  # nothing lost
    assert os.path.exists("/dev/null")
