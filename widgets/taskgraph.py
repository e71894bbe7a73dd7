"""``TaskGraph``: the live task graph as a notebook widget (anywidget).

The widget's ``view`` (a ``GraphModel.view()``) is a synced trait, saved with the notebook's
widget state. The frontend also sends back ``picture``, a PNG (base64) of what it drew; the
widget's output carries it beside the widget itself, so a notebook opened where no widget
can be drawn (no kernel, nbviewer, a course handout) still shows the graph. The frontend
module is ``static/taskgraph.js`` with the dagre layout library in front of it, the same
module the dashboard's graph page loads.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import anywidget
import traitlets
from IPython.display import display

from .assets import css_source, esm_source
from .feed import CELL_LABELS, NoClusterError, current_job_id, feed
from .model import SCOPES, GraphModel
from .owner import cancel_task

__all__ = ["NoClusterError", "TaskGraph"]

PICTURE_RATIO = 1.5  # as in static/taskgraph.js


class TaskGraph(anywidget.AnyWidget):
    """The live graph of a cellfleet cluster's tasks.

    ``scope``: ``"notebook"`` (the tasks this process submitted, and theirs), ``"cell"`` (one
    cell's: ``cell`` is its msg_id, default the running cell) or ``"all"`` (the cluster's).
    ``max_nodes``: above this many tasks, tasks are grouped by function. Updates arrive from
    the GCS's task events at most every ``interval`` seconds.
    """

    _esm = traitlets.Unicode(esm_source()).tag(sync=True)
    _css = traitlets.Unicode(css_source()).tag(sync=True)
    view = traitlets.Dict().tag(sync=True)
    expanded = traitlets.List(traitlets.Unicode()).tag(sync=True)
    height = traitlets.Int(460).tag(sync=True)
    picture = traitlets.Unicode("").tag(sync=True)

    def __init__(self, scope: str = "notebook", cell: str | None = None, *,
                 max_nodes: int = 300, interval: float = 0.5, **kwargs: Any) -> None:
        if scope not in SCOPES:
            raise ValueError(f"TaskGraph(scope=...) must be one of {', '.join(SCOPES)}, "
                             f"not {scope!r}")
        if scope == "cell" and cell is None:
            cell = _running_cell()
            if cell is None:
                raise ValueError("TaskGraph(scope='cell') outside a cell needs cell=MSG_ID")
        source = feed()  # NoClusterError says how to start a cluster
        job_id = current_job_id() if scope == "notebook" else None
        super().__init__(**kwargs)
        self.model = GraphModel(scope, job_id=job_id, tag=cell, max_nodes=max_nodes)
        self.model.cell_labels = CELL_LABELS
        self._feed = source
        self._listener = source.add(self.model, self._refresh, interval=interval)
        self.on_msg(self._on_frontend_msg)
        self.observe(lambda change: self._feed.poke(self._listener), names="expanded")
        self.observe(self._show_picture, names="picture")
        self._display_id: str | None = None

    def _ipython_display_(self) -> None:
        """Displayed with an id, so the output can be updated with the latest picture."""
        if self._display_id is None:
            self._display_id = self.model_id
            display(self._bundle(), raw=True, display_id=self._display_id,
                    metadata=self._metadata())
        else:
            display(self._bundle(), raw=True, metadata=self._metadata())

    def _metadata(self) -> dict:
        """The picture at its CSS size (it is drawn at 1.5 pixels per CSS pixel)."""
        if not self.picture:
            return {}
        width = struct.unpack(">I", base64.b64decode(self.picture[:32])[16:20])[0]
        return {"image/png": {"width": round(width / PICTURE_RATIO)}}

    def _bundle(self) -> dict:
        bundle = self._repr_mimebundle_() or {}
        bundle = dict(bundle[0] if isinstance(bundle, tuple) else bundle)
        if self.picture:
            bundle["image/png"] = self.picture
        return bundle

    def _show_picture(self, change: dict) -> None:
        if self._display_id is not None:
            display(self._bundle(), raw=True, display_id=self._display_id, update=True,
                    metadata=self._metadata())

    def __repr__(self) -> str:
        return f"TaskGraph(scope={self.model.scope!r}): {self.model.total()} tasks"

    def _refresh(self) -> None:
        """Called by the feed (the model's lock held) when the model changed."""
        self.view = self.model.view(set(self.expanded))

    def _on_frontend_msg(self, widget: Any, content: Any, buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        if content.get("type") == "hello":
            self.send({"type": "hello"})
        elif content.get("type") == "cancel":
            _cancel(self.model, str(content.get("task", "")))

    def close(self) -> None:
        listener = getattr(self, "_listener", None)
        if listener is not None:
            self._feed.remove(listener)
        super().close()


def _running_cell() -> str | None:
    try:
        from cellfleet.core.core_worker import submission_tag
    except ImportError:
        return None
    return submission_tag.get() or None


def _cancel(model: GraphModel, task_id: str) -> None:
    """Cancel a task this process submitted (the graph's Cancel button)."""
    if task_id in model.records:
        cancel_task(task_id)  # a task that ended meanwhile is not held here: nothing to do
