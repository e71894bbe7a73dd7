"""The course's fixtures: the cellfleet kernelspec."""

from __future__ import annotations

import os
import tempfile

import pytest
from jupyter_client.kernelspec import KernelSpecManager

KERNEL = "cellfleet"


@pytest.fixture(scope="session")
def cellfleet_kernelspec() -> str:
    """The installed ``cellfleet`` kernelspec (installed into the run's folder if missing)."""
    if KERNEL not in KernelSpecManager().find_kernel_specs():
        from cellfleet.kernel.install import main

        prefix = tempfile.mkdtemp(prefix="kernelspec-", dir=os.environ["CELLFLEET_TMPDIR"])
        assert main(["install", "--prefix", prefix]) == 0
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            p for p in (os.path.join(prefix, "share", "jupyter"), os.environ.get("JUPYTER_PATH"))
            if p)
    return KernelSpecManager().find_kernel_specs()[KERNEL]
