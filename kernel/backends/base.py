"""The interface between the kernel's magics and views and the engine that runs the work.

``Backend`` is everything the kernel asks of a cluster: connect and shut down, submit a
cell's code as a task (or a call on a named actor) with options, ship and pull values, route
what tasks print to the cell that submitted them, cancel a cell's work (force on a second
interrupt), the ``get``/``wait`` the progress bars wrap, and the cluster's summary for
``%cluster``. ``CellfleetBackend`` (cellfleet's own runtime) and ``RayBackend`` (an existing
Ray cluster) implement it; nothing in the magics, the output router or the views names either.

What the dashboard and the widget read (nodes, tasks, actors, objects) is the
``StateSource`` side: it answers the same view questions for either engine, in the shape
cellfleet's GCS answers them, so one view model serves both.
"""

from __future__ import annotations

import ast
import types
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Backend", "NodeSummary", "StateSource", "TaskOptions"]

LogHandler = Callable[[list], None]  # lines [job, tag, task, name, pid, stream, text]


@dataclass
class TaskOptions:
    """What a ``%%remote`` cell asks of its task, in engine-neutral terms."""

    name: str
    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: dict[str, float] = field(default_factory=dict)
    node_id: str | None = None  # hard node affinity

    def resource_options(self) -> dict[str, Any]:
        """The resource requests given, as Ray-style ``.options()`` keywords."""
        options: dict[str, Any] = {}
        if self.num_cpus is not None:
            options["num_cpus"] = self.num_cpus
        if self.num_gpus:
            options["num_gpus"] = self.num_gpus
        if self.resources:
            options["resources"] = dict(self.resources)
        return options


@dataclass(frozen=True)
class NodeSummary:
    """A node as the magics need it."""

    node_id: str  # hex
    alive: bool


class Backend(ABC):
    """One engine the kernel can run cells on (see the module docstring)."""

    #: ``"cellfleet"`` or ``"ray"``: what ``%cluster`` says.
    name: str
    #: The module bound to ``cellfleet`` in the notebook (the Ray-style API of this engine).
    api: types.ModuleType
    #: Its exceptions module (``RayError``, ``RayTaskError``, ``TaskCancelledError``).
    exceptions: types.ModuleType

    # -- life cycle -------------------------------------------------------------------------

    @abstractmethod
    def connect(self, address: str | None, *, num_cpus: float | int | None) -> dict:
        """Start a local cluster (``address`` None) or connect; a dict with ``address`` and,
        where known, ``session_dir``."""

    @abstractmethod
    def is_connected(self) -> bool:
        """Whether this process has a live connection."""

    @abstractmethod
    def shutdown(self) -> None:
        """Disconnect (a local cluster this process started stops)."""

    @abstractmethod
    def connection(self) -> Any:
        """An object that is the same for as long as one connection lasts (actors made
        through it are valid only as long)."""

    @abstractmethod
    def describe(self, *, connected: bool) -> Any:
        """What ``%cluster`` shows (a ``ClusterInfo``)."""

    def registration(self, info: dict) -> dict | None:
        """What the dashboard's discovery needs to find this cluster (``register_cluster``'s
        keywords), or None when it cannot be found from here."""
        return None

    def logs_dir(self) -> str:
        return ""

    # -- output -----------------------------------------------------------------------------

    @abstractmethod
    def route_output(self, handler: LogHandler | None) -> None:
        """Send every line this process's tasks print to ``handler`` (idempotent)."""

    @abstractmethod
    def output_barrier(self, timeout: float = 0.5) -> None:
        """Wait (at most ``timeout``) until the lines of finished tasks have been routed."""

    @abstractmethod
    def cell(self, tag: str) -> AbstractContextManager[None]:
        """While inside, tasks submitted from this thread belong to the cell ``tag``."""

    @abstractmethod
    def current_tag(self) -> str:
        """The tag of the cell running now ("" outside cells)."""

    def source_transformer(self) -> ast.NodeTransformer | None:
        """A rewrite of the notebook's cells for this engine (e.g. its imports), or None."""
        return None

    # -- submitting -------------------------------------------------------------------------

    @abstractmethod
    def submit(self, function: Callable, args: tuple, kwargs: dict,
               options: TaskOptions) -> Any:
        """Run ``function(*args, **kwargs)`` as a task (no retries); its ref."""

    @abstractmethod
    def actor(self, cls: type, name: str, options: TaskOptions) -> Any:
        """The named actor ``name`` of class ``cls`` (created on first use)."""

    @abstractmethod
    def call(self, actor: Any, method: str, args: tuple, kwargs: dict, name: str) -> Any:
        """Call ``actor.method`` as a task named ``name``; its ref."""

    @abstractmethod
    def is_ref(self, value: Any) -> bool:
        """Whether ``value`` is one of this engine's object refs."""

    @abstractmethod
    def get(self, refs: list) -> list:
        """The values of ``refs`` (raises the engine's errors)."""

    @abstractmethod
    def on_done(self, ref: Any, callback: Callable[[Callable[[], Any]], None]) -> None:
        """Call ``callback(result)`` once ``ref`` is ready, where ``result()`` returns its
        value or raises its error."""

    @abstractmethod
    def nodes(self) -> list[NodeSummary]:
        """The cluster's nodes."""

    def node_affinity_available(self) -> bool:
        return True

    # -- cancelling -------------------------------------------------------------------------

    @abstractmethod
    def cancel_cell(self, tag: str, *, force: bool = False,
                    background: bool = False) -> int | None:
        """Cancel the unfinished tasks cell ``tag`` submitted; still running a moment later
        (or on a second interrupt): force. The number cancelled (None in the background)."""

    @abstractmethod
    def cancel_refs(self, refs: list, *, force: bool = False,
                    background: bool = False) -> int | None:
        """Cancel the tasks that make ``refs``."""


class StateSource(Protocol):
    """What the dashboard and the widget read from a cluster, as cellfleet's GCS answers it.

    ``ask(*messages)`` answers ``GetNodes``, ``ListTasks``, ``ListTaskChanges``,
    ``ListTaskGroups``, ``SummarizeTasks``, ``ListActors`` and ``ListObjects`` (from
    ``cellfleet._messages``) with the GCS's reply shapes; ``limits`` says, in one sentence
    each, what this engine does not expose (shown on the pages).
    """

    limits: tuple[str, ...]

    async def ask(self, *messages: Any) -> list[Any]: ...

