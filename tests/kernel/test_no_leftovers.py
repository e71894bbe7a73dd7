"""The test suite removes the folders it makes (session roots, Jupyter runtime dirs,
kernelspecs): a run of a test that starts a cluster and a kernelspec leaves nothing in TMPDIR."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import cellfleet

PROBE = "CELLFLEET_TEST_LEFTOVER_PROBE"
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not os.environ.get(PROBE), reason="run by test_a_test_run_leaves_no_folders")
def test_probe_uses_a_cluster_and_a_kernelspec(cluster, kernelspec_dir) -> None:
    assert cellfleet.get(cellfleet.put(1)) == 1
    assert os.path.isdir(kernelspec_dir)


@pytest.mark.integration
def test_a_test_run_leaves_no_folders(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_PATH"}  # its own kernelspec
    env.update({"TMPDIR": str(tmp_path), PROBE: "1"})
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"{__file__}::test_probe_uses_a_cluster_and_a_kernelspec"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout + run.stderr
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("cellfleet-"))
    assert not left, f"the test run left {left} in TMPDIR"
