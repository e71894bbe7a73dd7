"""``%%remote`` names its task and its code after the prompt's In[N] (it once said ``cell-27``
under ``[26]``: IPython counts the cell before running it), whatever ran before it."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.integration

FAILING_CELL = "%%remote\nx = 1\ny = x / 0\n"


def _count(cell) -> int:
    return cell.reply["content"]["execution_count"]


def _file_number(cell) -> int:
    found = set(re.findall(r"<cell-(\d+)>", cell.traceback_text()))
    assert len(found) == 1, cell.traceback_text()
    return int(found.pop())


def test_a_remote_cells_traceback_names_its_own_prompt(kernel) -> None:
    first = kernel.execute(FAILING_CELL)
    assert not first.ok and _file_number(first) == _count(first)
    assert kernel.execute("1 + 1").ok  # a plain cell in between
    assert not kernel.execute("1 / 0").ok  # a failed one
    assert kernel.execute("quiet = 1", silent=True).ok  # a silent one takes no number
    later = kernel.execute(FAILING_CELL)
    assert _count(later) == _count(first) + 3
    assert _file_number(later) == _count(later)


def test_a_remote_cells_task_is_named_after_its_prompt(kernel) -> None:
    cell = kernel.execute("%%remote\n'done'")
    assert cell.ok and cell.result == "'done'"
    names = kernel.execute(
        "from cellfleet.util.state import list_tasks\n"
        "sorted({t['name'] for t in list_tasks() if t['name'].startswith('cell-')})")
    assert f"'cell-{_count(cell)}'" in names.result
    assert f"'cell-{_count(cell) + 1}'" not in names.result
