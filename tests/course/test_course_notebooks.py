"""Every lesson runs top to bottom on the cellfleet kernel (nbclient) with its exercises
solved, and every exercise's check rejects the untouched placeholder with a message.

Each exercise cell runs first as it is stored, with its check, which must fail with an
AssertionError that says what is wrong; then the exercise runs with its solution's source
(the hidden solution cell itself is left out, as a student who solved it would) and the
check must pass. The lesson's processes end with its kernel (the module's leftover check)."""

from __future__ import annotations

import os
import time

import nbformat
import pytest
from course_kernel import KERNEL, NOTEBOOKS
from nbclient import NotebookClient
from test_course_outline import LESSONS, role

pytestmark = pytest.mark.integration
LESSON_TIMEOUT_S = 150  # a whole lesson; each must stay well under 3 minutes


def solved(nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[str]]:
    """The lesson with each exercise run first as it is, with its check (allowed to fail),
    then replaced by its solution; and the exercise ids in order."""
    solutions = {role(c, "solution"): c.source for c in nb.cells if role(c, "solution")}
    checks = {role(c, "check"): c.source for c in nb.cells if role(c, "check")}
    cells, order = [], []
    for cell in nb.cells:
        ex = role(cell, "exercise")
        if role(cell, "solution"):
            continue
        if ex:
            check = nbformat.v4.new_code_cell(checks[ex],
                                              metadata={"tags": ["raises-exception"]})
            check.metadata["cellfleet"] = {"rejects": ex}
            cells += [nbformat.v4.new_code_cell(cell.source), check]
            cell = nbformat.v4.new_code_cell(solutions[ex])
            order.append(ex)
        cells.append(cell)
    nb.cells = cells
    return nb, order


@pytest.mark.timeout(LESSON_TIMEOUT_S + 30)
@pytest.mark.parametrize("name", sorted(LESSONS))
def test_the_lesson_runs_and_its_checks_reject_the_placeholders(name: str,
                                                               cellfleet_kernelspec,
                                                               tmp_path) -> None:
    nb, order = solved(nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4))
    client = NotebookClient(nb, timeout=90, kernel_name=KERNEL,
                            resources={"metadata": {"path": NOTEBOOKS}})
    start = time.monotonic()
    client.execute(env={**os.environ, "CELLFLEET_NUM_CPUS": "2"})
    took = time.monotonic() - start
    assert took < LESSON_TIMEOUT_S, f"{name} took {took:.0f}s"
    errors = [(i, o.ename, o.evalue) for i, c in enumerate(nb.cells) if c.cell_type == "code"
              and not role(c, "rejects") for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert not errors, f"{name}: cells failed: {errors}"
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   and not role(c, "rejects") for o in c.get("outputs", []))
    assert text.count("correct") >= len(order), f"{name}: not every check passed:\n{text}"
    for cell in (c for c in nb.cells if role(c, "rejects")):
        ex = role(cell, "rejects")
        failures = [o for o in cell.outputs if o.output_type == "error"]
        assert failures, f"{name}: the check of {ex} accepted the untouched placeholder"
        assert failures[0].ename == "AssertionError", \
            f"{name}: the check of {ex} failed with {failures[0].ename}, not a check"
        assert len(failures[0].evalue) > 20, \
            f"{name}: the check of {ex} does not say what is wrong: {failures[0].evalue!r}"
