"""Holding many zero-copy objects costs no file descriptor per object.

Regression: every read view of the node's arena was an mmap of its own, holding a dup'ed file
descriptor, so ``get`` of 2,000 large objects failed with EMFILE under ``ulimit -n 1024``, in
drivers and tasks alike.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

LIMIT = 1024
OBJECTS = 2000

DRIVER = textwrap.dedent(f"""\
    import resource

    # Soft and hard: nothing the runtime does at start may raise it again.
    resource.setrlimit(resource.RLIMIT_NOFILE, ({LIMIT}, {LIMIT}))

    import numpy as np

    import cellfleet as ray

    ray.init(num_cpus=1, object_store_memory=400 * 2**20)
    try:
        # 104 KB each: above the inline threshold, so each lives in the arena.
        refs = [ray.put(np.full(13_000, i, dtype=np.float64)) for i in range({OBJECTS})]
        arrays = ray.get(refs, timeout=120)
        assert [int(a[0]) for a in arrays] == list(range({OBJECTS}))
        assert not arrays[0].flags.writeable  # zero-copy views of the arena, not copies

        @ray.remote
        def hold_all(boxed):
            held = ray.get(boxed[0], timeout=120)
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)
            return len(held), sum(int(a[-1]) for a in held), limit

        count, total, limit = ray.get(hold_all.remote([refs]), timeout=120)
        assert (count, total) == ({OBJECTS}, sum(range({OBJECTS}))), (count, total)
        assert limit == ({LIMIT}, {LIMIT}), limit  # the task ran under the same limit
        print("ok", len(arrays))
    finally:
        ray.shutdown()
""")


def test_get_of_2000_large_objects_under_ulimit_1024_in_a_driver_and_a_task(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith(f"ok {OBJECTS}")
