"""The welcome notebook runs top to bottom on the cellfleet kernel (nbclient)."""

from __future__ import annotations

import os

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.integration

NOTEBOOKS = os.path.join(os.path.dirname(__file__), "..", "..", "notebooks")


def test_welcome_notebook_runs(kernelspec_dir, tmp_path) -> None:
    nb = nbformat.read(os.path.join(NOTEBOOKS, "00-welcome.ipynb"), as_version=4)
    assert nb.metadata.kernelspec.name == "cellfleet"
    client = NotebookClient(nb, timeout=60, kernel_name="cellfleet",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env={**os.environ, "CELLFLEET_NUM_CPUS": "2"})
    outputs = {i: cell.get("outputs", []) for i, cell in enumerate(nb.cells)
               if cell.cell_type == "code"}
    text = "\n".join(
        out.get("text", "") + out.get("data", {}).get("text/plain", "")
        for cell_outputs in outputs.values() for out in cell_outputs
    )
    assert "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in text
    assert "hello, notebook, from process" in text
    assert "summed 1000 squares" in text
    assert "332833500" in text
    assert "1000" in text
    assert "42" in text
    assert not [out for cell_outputs in outputs.values() for out in cell_outputs
                if out.get("output_type") == "error"]
