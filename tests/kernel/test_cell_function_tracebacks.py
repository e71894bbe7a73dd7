"""A remote function defined in a notebook cell: its traceback shows the cell's own lines.

Regression: cloudpickle 3.1.3 names code pickled by value ``"<dynamic-code>"``, and a worker
never has a cell's source, so the remote traceback showed neither the cell nor its lines.
"""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.integration


def test_remote_function_from_a_cell_shows_the_cells_lines(kernel) -> None:
    kernel.execute(
        "@cellfleet.remote\n"
        "def ratio(a, b):\n"
        "    scale = 2\n"
        "    return scale * a / b\n"
    )
    cell = kernel.execute("cellfleet.get(ratio.remote(1, 0))")
    assert not cell.ok
    shown = cell.traceback_text()
    assert re.search(r'File "[^"]+", line 4, in ratio', shown), shown
    assert "<dynamic-code>" not in shown, shown
    assert "return scale * a / b" in shown, shown
    assert "ZeroDivisionError" in shown, shown
