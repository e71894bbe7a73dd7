"""The welcome notebook runs top to bottom on the cellfleet kernel (nbclient), in its own
folder, and leaves the checkout as it found it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator

import nbformat
import pytest
from jupyter_server.services.contents.filemanager import FileContentsManager
from nbclient import NotebookClient

pytestmark = pytest.mark.integration

NOTEBOOKS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "notebooks"))
WELCOME = os.path.join(NOTEBOOKS, "00-welcome.ipynb")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _git_status() -> str:
    """``git status`` of notebooks/ (untracked and modified files, not ignored ones)."""
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--",
                           NOTEBOOKS], capture_output=True, text=True, check=True,
                          cwd=NOTEBOOKS).stdout


@pytest.fixture
def lab_checkpoints() -> Iterator[None]:
    """The .ipynb_checkpoints/ folder JupyterLab makes next to a notebook it opened."""
    path = os.path.join(NOTEBOOKS, ".ipynb_checkpoints")
    made = not os.path.isdir(path)
    os.makedirs(os.path.join(path, "x"), exist_ok=True)
    shutil.copyfile(WELCOME, os.path.join(path, "x", "00-welcome-checkpoint.ipynb"))
    yield
    if made:
        shutil.rmtree(path, ignore_errors=True)


def test_welcome_notebook_runs_and_leaves_the_checkout_clean(kernelspec_dir,
                                                             lab_checkpoints) -> None:
    before = _git_status()
    assert ".ipynb_checkpoints" not in before, "JupyterLab's checkpoints are not ignored"
    nb = nbformat.read(WELCOME, as_version=4)
    assert nb.metadata.kernelspec.name == "cellfleet"
    assert not [c for c in nb.cells if c.get("outputs") or c.get("execution_count")], \
        "the stored notebook has outputs: clear them before committing"
    client = NotebookClient(nb, timeout=60, kernel_name="cellfleet",
                            resources={"metadata": {"path": NOTEBOOKS}})  # as Lab runs it
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
    assert _git_status() == before, "running the welcome notebook changed the checkout"


def test_a_tasks_print_comes_before_the_cells_result(kernelspec_dir, tmp_path) -> None:
    nb = nbformat.read(WELCOME, as_version=4)
    greet = [i for i, c in enumerate(nb.cells) if "def greet" in c.source]
    assert greet, "the welcome notebook's greet cell is gone"
    nb.cells = nb.cells[:greet[0] + 1]
    for _ in range(5):  # the race it guards against is a matter of milliseconds
        nb.cells.append(nbformat.v4.new_code_cell(nb.cells[greet[0]].source))
    client = NotebookClient(nb, timeout=60, kernel_name="cellfleet",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env={**os.environ, "CELLFLEET_NUM_CPUS": "2"})
    for cell in nb.cells[greet[0]:]:
        kinds = [out["output_type"] for out in cell.outputs]
        assert kinds == ["stream", "execute_result"], cell.outputs


def test_the_welcome_notebooks_links_open_in_jupyterlab() -> None:
    """JupyterLab's root is notebooks/: every relative link must resolve inside it."""
    contents = FileContentsManager(root_dir=NOTEBOOKS)
    nb = nbformat.read(WELCOME, as_version=4)
    links = [link for cell in nb.cells if cell.cell_type == "markdown"
             for link in LINK.findall(cell.source) if "://" not in link]
    assert "docs/kernel.md" in links
    for link in links:
        model = contents.get(link.split("#")[0])
        assert model["content"], link
