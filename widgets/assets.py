"""The task-graph component's files: one ES module (dagre, MIT, ``static/dagre.LICENSE``, then
``static/taskgraph.js``) and its stylesheet, for the widget and the dashboard alike."""

from __future__ import annotations

from functools import cache
from pathlib import Path

__all__ = ["STATIC", "css_source", "esm_source"]

STATIC = Path(__file__).with_name("static")


@cache
def esm_source() -> str:
    """The graph's ES module: the dagre layout library, then the drawing code."""
    return (STATIC / "dagre.min.js").read_text() + "\n" + (STATIC / "taskgraph.js").read_text()


@cache
def css_source() -> str:
    return (STATIC / "taskgraph.css").read_text()
