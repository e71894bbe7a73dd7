"""A cellfleet kernel driven cell by cell (nbclient), for the course's tests."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator

import nbformat
from nbclient import NotebookClient

KERNEL = "cellfleet"
NOTEBOOKS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "notebooks"))
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class LiveKernel:
    """A cellfleet kernel that runs cells one at a time (nbclient), keeping their outputs."""

    def __init__(self, client: NotebookClient) -> None:
        self.client = client

    def run(self, source: str, timeout: float = 90) -> tuple[str, dict | None]:
        """Run a cell; (its text output, its error output or None)."""
        cell = nbformat.v4.new_code_cell(source)
        self.client.nb.cells.append(cell)
        self.client.timeout = timeout
        self.client.execute_cell(cell, len(self.client.nb.cells) - 1)
        text, error = [], None
        for out in cell.outputs:
            if out.output_type == "error":
                error = {"ename": out.ename, "evalue": _ANSI.sub("", out.evalue)}
            else:
                text.append(out.get("text", "") + out.get("data", {}).get("text/plain", ""))
        return "".join(text), error

    def ok(self, source: str, timeout: float = 90) -> str:
        """Run a cell that must not fail; its text output."""
        text, error = self.run(source, timeout)
        assert error is None, f"the cell failed: {error}\n{source}\n{text}"
        return text


@contextlib.contextmanager
def start_kernel(env: dict[str, str] | None = None) -> Iterator[LiveKernel]:
    """A LiveKernel; the kernel is shut down on exit."""
    nb = nbformat.v4.new_notebook()
    client = NotebookClient(nb, timeout=90, kernel_name=KERNEL, allow_errors=True,
                            resources={"metadata": {"path": tempfile.gettempdir()}})
    full_env = {**os.environ, "CELLFLEET_NUM_CPUS": "1", **(env or {})}
    with client.setup_kernel(env=full_env):
        yield LiveKernel(client)
