"""Each lesson of the course keeps its parts: goals first, text before code, exercises with a
placeholder, a check that rejects it with a message, and a hidden solution; the lessons link
to each other and the stored notebooks carry no outputs."""

from __future__ import annotations

import ast
import os
import re

import nbformat
import pytest
from course_kernel import NOTEBOOKS

LESSONS = {
    "01-tasks-and-futures.ipynb": ["ray.wait", "%taskgraph", "tree_sum"],
    "02-actors.ipynb": ["ParameterServer", "Tasks or actors"],
    "03-object-store.ipynb": ["ray.put", "owner", "list_objects"],
    "04-scheduling.ipynb": ["Cluster(", "SPREAD", "placement_group", "placement reason"],
    "05-fault-tolerance.ipynb": ["%chaos kill-worker", "%chaos kill-node", "kill-actor",
                                 "restart-gcs", "OwnerDiedError"],
    "06-gcs.ipynb": ["list_nodes", "list_jobs", "list_actors", "SIGSTOP"],
    "07-application.ipynb": ["count_inside", "speedup_svg", "Simulator"],
    "08-mpi-mapreduce-spark.ipynb": ["ring_allreduce", "map_count", "class RDD"],
}
LINK = re.compile(r"\]\(([^)\s]+)\)")


def load(name: str) -> nbformat.NotebookNode:
    return nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)


def role(cell: nbformat.NotebookNode, kind: str) -> str | None:
    return (cell.metadata.get("cellfleet") or {}).get(kind)


def outline(nb: nbformat.NotebookNode) -> dict[str, dict[str, int]]:
    """exercise id -> index of its exercise, check and solution cells."""
    parts: dict[str, dict[str, int]] = {}
    for i, cell in enumerate(nb.cells):
        for kind in ("exercise", "check", "solution"):
            if role(cell, kind):
                parts.setdefault(role(cell, kind), {})[kind] = i
    return parts


def test_the_course_has_exactly_its_eight_lessons() -> None:
    found = sorted(n for n in os.listdir(NOTEBOOKS) if re.match(r"0[1-9]-.*\.ipynb$", n))
    assert found == sorted(LESSONS)


@pytest.mark.parametrize("name", sorted(LESSONS))
def test_a_lesson_opens_with_its_goals_and_explains_before_code(name: str) -> None:
    nb = load(name)
    assert nb.metadata.kernelspec.name == "cellfleet"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith(f"# Lesson {int(name[:2])}")
    assert "**Goals.**" in first.source and first.source.count("\n* ") >= 3, \
        f"{name}: the first cell must list the lesson's goals (3 or more bullets)"
    assert nb.cells[1].cell_type == "markdown" and "picture" in nb.cells[1].source.lower(), \
        f"{name}: the second cell must be the picture (text before code)"
    assert "```" in nb.cells[1].source or "<svg" in nb.cells[1].source, \
        f"{name}: the picture cell has no diagram"
    text = "\n".join(c.source for c in nb.cells)
    for needle in LESSONS[name]:
        assert needle in text, f"{name} lost its {needle!r} part"
    assert "## Summary" in text and "## Exercises" in text


@pytest.mark.parametrize("name", sorted(LESSONS))
def test_each_exercise_has_a_placeholder_a_check_and_a_hidden_solution(name: str) -> None:
    nb = load(name)
    parts = outline(nb)
    assert len(parts) >= 2, f"{name}: a lesson needs at least two checked exercises"
    for ex, where in parts.items():
        assert set(where) == {"exercise", "check", "solution"}, f"{name}: {ex} has {where}"
        assert where["exercise"] < where["check"] < where["solution"], \
            f"{name}: {ex} must be exercise, then check, then solution"
        exercise, check, solution = (nb.cells[where[k]] for k in ("exercise", "check",
                                                                    "solution"))
        assert "exercise" in exercise.metadata.get("tags", [])
        assert "check" in check.metadata.get("tags", [])
        assert "solution" in solution.metadata.get("tags", [])
        assert solution.metadata.get("jupyter", {}).get("source_hidden") is True, \
            f"{name}: the solution of {ex} is not hidden"
        assert "..." in exercise.source, f"{name}: {ex} has no placeholder (...) to fill in"
        assert "..." not in solution.source, f"{name}: the solution of {ex} is unfinished"
        assert nb.cells[where["exercise"] - 1].cell_type == "markdown" or \
            nb.cells[where["exercise"] - 2].cell_type == "markdown", \
            f"{name}: {ex} has no statement before it"
        tree = ast.parse(check.source.replace("%", "#"))
        asserts = [node for node in ast.walk(tree) if isinstance(node, ast.Assert)]
        raises = "raise AssertionError(" in check.source
        assert asserts or raises, f"{name}: {ex}'s check asserts nothing"
        assert all(a.msg is not None for a in asserts), \
            f"{name}: every assert of {ex}'s check must say what is wrong"
        assert "correct" in check.source


@pytest.mark.parametrize("name", sorted(LESSONS))
def test_stored_lessons_have_no_outputs_and_their_links_resolve(name: str) -> None:
    nb = load(name)
    assert not [c for c in nb.cells if c.get("outputs") or c.get("execution_count")], \
        f"{name} has outputs: clear them before committing"
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for link in LINK.findall(cell.source):
            if "://" not in link:
                assert os.path.exists(os.path.join(NOTEBOOKS, link.split("#")[0])), \
                    f"{name}: the link {link} leads nowhere"


def test_the_welcome_notebook_lists_the_course() -> None:
    text = "\n".join(c.source for c in load("00-welcome.ipynb").cells)
    for name in LESSONS:
        assert f"({name})" in text, f"the welcome notebook does not link {name}"
