"""Freed space in the node's arena goes back to the system, seen from the arena's file."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import wait_until

import cellfleet as ray
from cellfleet._shm import SHM_DIR

pytestmark = pytest.mark.integration

MiB = 2**20


def arena_bytes() -> int:
    """Memory the arena file holds now (its allocated blocks, not its size)."""
    core = ray._context.core
    return os.stat(os.path.join(SHM_DIR, core.arena.name)).st_blocks * 512


def test_deleting_a_large_object_gives_its_pages_back(fresh_cluster) -> None:
    fresh_cluster(num_cpus=1, object_store_memory=512 * MiB)
    before = arena_bytes()
    ref = ray.put(np.ones(256 * MiB, dtype=np.uint8))
    assert arena_bytes() >= before + 256 * MiB
    del ref
    wait_until(lambda: arena_bytes() < before + 16 * MiB, timeout=10,
               message="the freed object's pages to leave the arena file")
