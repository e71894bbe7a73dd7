"""Notebook views of a cellfleet cluster: ``TaskGraph``, the live task graph.

``cellfleet.widgets.TaskGraph(scope="notebook" | "cell" | "all")`` (or ``%taskgraph`` in the
cellfleet kernel) shows the graph in the output area; see ``docs/kernel.md``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GraphModel", "NoClusterError", "TaskGraph"]


def __getattr__(name: str) -> Any:
    if name == "TaskGraph":
        from .taskgraph import TaskGraph

        return TaskGraph
    if name == "NoClusterError":
        from .feed import NoClusterError

        return NoClusterError
    if name == "GraphModel":
        from .model import GraphModel

        return GraphModel
    raise AttributeError(name)
