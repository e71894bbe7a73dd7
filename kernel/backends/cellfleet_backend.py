"""The kernel on cellfleet's own runtime (the default): a local runtime or a cellfleet cluster.

Output is routed by the runtime itself: every task carries ``submission_tag`` (the cell's
msg_id), and the lines it prints come back with it to the core worker's ``log_handler``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import cellfleet
from cellfleet import _context
from cellfleet import _messages as m
from cellfleet import exceptions as cf_exceptions
from cellfleet.core.core_worker import submission_tag

from .. import interrupts
from .base import Backend, LogHandler, NodeSummary, TaskOptions

__all__ = ["CellfleetBackend", "QUERY_TIMEOUT_S"]

QUERY_TIMEOUT_S = 5.0


def _node_affinity() -> Any:
    try:
        from cellfleet.util.scheduling_strategies import (  # type: ignore[import-not-found]
            NodeAffinitySchedulingStrategy,
        )
    except ImportError:
        return None
    return NodeAffinitySchedulingStrategy


class CellfleetBackend(Backend):
    """cellfleet's runtime behind the kernel's backend interface."""

    name = "cellfleet"
    api = cellfleet
    exceptions = cf_exceptions

    def __init__(self) -> None:
        self._remote_functions: dict[Callable, Any] = {}
        self._remote_classes: dict[type, Any] = {}

    # -- life cycle -------------------------------------------------------------------------

    def connect(self, address: str | None, *, num_cpus: float | int | None) -> dict:
        if cellfleet.is_initialized():
            return dict(cellfleet.init(ignore_reinit_error=True))
        if address:
            return dict(cellfleet.init(address=address, log_to_driver=True))
        # "local", not None: None would pick up $CELLFLEET_ADDRESS again.
        return dict(cellfleet.init(address="local", num_cpus=num_cpus, log_to_driver=True))

    def is_connected(self) -> bool:
        return cellfleet.is_initialized()

    def shutdown(self) -> None:
        cellfleet.shutdown()

    def connection(self) -> Any:
        return _context.core

    def registration(self, info: dict) -> dict | None:
        import os

        session_dir = info.get("session_dir")
        token_file = os.environ.get("CELLFLEET_TOKEN_FILE") or (
            os.path.join(session_dir, "token") if session_dir else None)
        if token_file is None:
            return None  # reached with CELLFLEET_TOKEN only: the dashboard finds its session
        return {"address": info["address"], "token_file": token_file,
                "session_dir": session_dir}

    @staticmethod
    def _info() -> dict:
        """``init``'s RuntimeInfo of the current runtime (session dir, dashboard), or {}."""
        if not cellfleet.is_initialized():
            return {}
        try:
            return dict(cellfleet.init(ignore_reinit_error=True))
        except Exception:  # noqa: BLE001 - only decoration
            return {}

    def logs_dir(self) -> str:
        import os

        session = self._info().get("session_dir")
        return os.path.join(session, "logs") if session else ""

    def describe(self, *, connected: bool) -> Any:
        from ..cluster import ClusterError, ClusterInfo, dashboard_url

        core = _context.core
        deadline = time.monotonic() + QUERY_TIMEOUT_S
        while True:
            try:
                nodes = core.request("gcs", m.GetNodes(), timeout=QUERY_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - a dead cluster gets one message
                raise ClusterError(
                    f"the cluster at {core.gcs_address} does not answer ({exc}); it may have "
                    "stopped.") from None
            # A runtime that has just started may not have registered its node yet.
            if any(n["alive"] for n in nodes) or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # polling the GCS's node table
        info = self._info()
        return ClusterInfo(
            address=core.gcs_address,
            mode="connected" if connected else "local",
            session_dir=info.get("session_dir"),
            node_id=core.node_id.hex(),
            job_id=core.job_id,
            nodes=nodes,
            dashboard_url=dashboard_url(info["address"]),
        )

    # -- output -----------------------------------------------------------------------------

    def route_output(self, handler: LogHandler | None) -> None:
        core = _context.core
        if core is not None and handler is not None and \
                core.log_handler is not handler and core.kind == "driver":
            core.log_handler = handler

    def output_barrier(self, timeout: float = 0.5) -> None:
        core = _context.core
        if core is not None:
            core.output_barrier(timeout)

    @contextlib.contextmanager
    def cell(self, tag: str) -> Iterator[None]:
        token = submission_tag.set(tag)
        try:
            yield
        finally:
            submission_tag.reset(token)

    def current_tag(self) -> str:
        return submission_tag.get()

    # -- submitting -------------------------------------------------------------------------

    def _remote(self, function: Callable) -> Any:
        held = self._remote_functions.get(function)
        if held is None:
            held = self._remote_functions[function] = cellfleet.remote(function)
        return held

    def submit(self, function: Callable, args: tuple, kwargs: dict,
               options: TaskOptions) -> Any:
        task_options = {"name": options.name, "max_retries": 0, **options.resource_options()}
        strategy = _node_affinity()
        if options.node_id and strategy is not None:
            task_options["scheduling_strategy"] = strategy(options.node_id, soft=False)
        return self._remote(function).options(**task_options).remote(*args, **kwargs)

    def actor(self, cls: type, name: str, options: TaskOptions) -> Any:
        remote_class = self._remote_classes.get(cls)
        if remote_class is None:
            remote_class = self._remote_classes[cls] = cellfleet.remote(cls)
        return remote_class.options(name=name, get_if_exists=True,
                                    **options.resource_options()).remote()

    def call(self, actor: Any, method: str, args: tuple, kwargs: dict, name: str) -> Any:
        return getattr(actor, method).options(name=name).remote(*args, **kwargs)

    def is_ref(self, value: Any) -> bool:
        return isinstance(value, cellfleet.ObjectRef)

    def get(self, refs: list) -> list:
        return cellfleet.get(refs)

    def on_done(self, ref: Any, callback: Callable[[Callable[[], Any]], None]) -> None:
        ref.future().add_done_callback(lambda future: callback(future.result))

    def nodes(self) -> list[NodeSummary]:
        return [NodeSummary(n["NodeID"], bool(n["Alive"])) for n in cellfleet.nodes()]

    def node_affinity_available(self) -> bool:
        return _node_affinity() is not None

    # -- cancelling -------------------------------------------------------------------------

    def cancel_cell(self, tag: str, *, force: bool = False,
                    background: bool = False) -> int | None:
        return interrupts.cancel_cell(tag, force=force, background=background)

    def cancel_refs(self, refs: list, *, force: bool = False,
                    background: bool = False) -> int | None:
        return interrupts.cancel_refs(refs, force=force, background=background)
