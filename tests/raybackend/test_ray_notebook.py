"""The welcome notebook, unchanged, runs top to bottom on the Ray backend (nbclient)."""

from __future__ import annotations

import os

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.integration

WELCOME = os.path.join(os.path.dirname(__file__), "..", "..", "notebooks", "00-welcome.ipynb")


def test_the_welcome_notebook_runs_on_ray(ray_kernelspec, tmp_path) -> None:
    nb = nbformat.read(WELCOME, as_version=4)
    client = NotebookClient(nb, timeout=240, kernel_name=ray_kernelspec,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [o for o in outputs if o["output_type"] == "error"], outputs
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                     for o in outputs)
    assert "Ray cluster (cellfleet's Ray backend)" in text  # %cluster says where it runs
    assert "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in text
    assert "hello, notebook, from process" in text  # a plain task's print, in its cell
    assert "summed 1000 squares" in text and "332833500" in text  # %%remote, names back
    assert "42" in text  # --nowait's names arrived
    greet = next(c for c in nb.cells if "def greet" in c.source)
    assert [o["output_type"] for o in greet.outputs] == ["stream", "execute_result"]
