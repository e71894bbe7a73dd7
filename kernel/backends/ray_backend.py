"""The kernel on an existing Ray cluster (``pip install 'cellfleet[ray]'``).

Chosen with ``CELLFLEET_BACKEND=ray`` (address: ``$RAY_ADDRESS``, else a local Ray) or
``%cluster connect ray://HOST:10001`` / ``ray:auto`` / ``ray:HOST:PORT``. In the notebook the
name ``cellfleet`` is Ray's module and ``import cellfleet as ray`` imports Ray, so the same
notebook runs on either backend; plain ``import ray`` code runs as it is.

* Output: the job's workers send what they print, with the task's id, to this kernel's
  ``OutputSink`` actor (``ray_output``); ``SubmissionBook`` knows which cell submitted
  which task (the kernel wraps Ray's ``.remote()`` submission), so each line reaches its cell.
* Interrupt: ``ray.cancel`` on the cell's unfinished tasks, ``force=True`` for those still
  running ``FORCE_AFTER_S`` later or when the cell is interrupted again.
* ``%%remote``: Ray tasks and named actors with the same options (resources, node affinity,
  actors as namespaces, all nodes, no-wait).
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import os
import queue
import threading
import time
import types
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from .base import Backend, LogHandler, NodeSummary, TaskOptions

__all__ = ["CancelPlan", "ImportRewriter", "RayBackend", "SubmissionBook", "import_ray"]

FORCE_AFTER_S = 1.0
PULL_TIMEOUT_S = 1.0
MAX_TASKS = 100_000  # task ids remembered with their cell
MAX_CANCELLED = 1_000  # cells remembered as interrupted once
NAMESPACE_ENV = "CELLFLEET_RAY_NAMESPACE"
DASHBOARD_ENV = "CELLFLEET_RAY_DASHBOARD"  # Ray's dashboard URL as this kernel reaches it
_cell_tag: contextvars.ContextVar[str] = contextvars.ContextVar("cellfleet_ray_cell", default="")


def import_ray() -> types.ModuleType:
    """``import ray``, or an error that says how to install it."""
    try:
        import ray
        import ray.exceptions  # noqa: F401 - a folder named "ray" in the cwd is no Ray
    except ImportError as exc:
        raise ImportError(f"the Ray backend needs Ray: pip install 'cellfleet[ray]' ({exc})") \
            from None
    return ray


class CancelPlan:
    """Which refs to cancel, and how hard, for an interrupted cell (no I/O)."""

    def __init__(self, refs: list[tuple[Any, bool]], *, again: bool) -> None:
        self.refs = refs  # (ref, is_actor_task)
        self.again = again

    def first(self, force: bool) -> list[tuple[Any, bool]]:
        """``(ref, force)`` now: force for normal tasks when asked or interrupted again
        (Ray cannot force-cancel an actor's task)."""
        hard = force or self.again
        return [(ref, hard and not actor) for ref, actor in self.refs]

    def escalate(self, still_running: set[Any]) -> list[tuple[Any, bool]]:
        """What to force once ``FORCE_AFTER_S`` passed and ``still_running`` have not ended."""
        if self.again:
            return []
        return [(ref, True) for ref, actor in self.refs if ref in still_running and not actor]


class SubmissionBook:
    """Which cell submitted which task, and each cell's unfinished tasks (no I/O, bounded)."""

    def __init__(self, max_tasks: int = MAX_TASKS) -> None:
        self.max_tasks = max_tasks
        self.tags: OrderedDict[str, str] = OrderedDict()  # task id hex -> cell tag
        self.pending: dict[str, dict[str, tuple[Any, bool]]] = {}  # tag -> id -> (ref, actor)
        self.cancelled: OrderedDict[str, None] = OrderedDict()
        self.lock = threading.Lock()

    def submitted(self, tag: str, task_id: str, ref: Any, actor: bool) -> None:
        with self.lock:
            self.tags[task_id] = tag
            while len(self.tags) > self.max_tasks:
                old_id, old_tag = self.tags.popitem(last=False)
                self.pending.get(old_tag, {}).pop(old_id, None)
            if ref is not None:
                self.pending.setdefault(tag, {})[task_id] = (ref, actor)

    def finished(self, task_id: str) -> None:
        with self.lock:
            tag = self.tags.get(task_id)
            refs = self.pending.get(tag)
            if refs is not None:
                refs.pop(task_id, None)
                if not refs:
                    del self.pending[tag]

    def tag_of(self, task_id: str) -> str:
        with self.lock:
            return self.tags.get(task_id, "")

    def plan(self, tag: str) -> CancelPlan:
        """The cell's unfinished tasks; a cell interrupted before is forced at once."""
        with self.lock:
            refs = list((self.pending.get(tag) or {}).values())
            again = tag in self.cancelled
            self.cancelled[tag] = None
            while len(self.cancelled) > MAX_CANCELLED:
                self.cancelled.popitem(last=False)
        return CancelPlan(refs, again=again)


class ImportRewriter(ast.NodeTransformer):
    """``import cellfleet as ray`` -> ``import ray as ray`` (and ``from cellfleet[.x] import``):
    a notebook written for cellfleet runs on the Ray backend unchanged."""

    def visit_Import(self, node: ast.Import) -> ast.Import:
        for alias in node.names:
            if alias.name == "cellfleet" or alias.name.startswith("cellfleet."):
                if alias.asname is None and alias.name == "cellfleet":
                    alias.asname = "cellfleet"
                elif alias.asname is None:
                    continue  # "import cellfleet.x" binds cellfleet: left alone
                alias.name = "ray" + alias.name[len("cellfleet"):]
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.ImportFrom:
        module = node.module or ""
        if node.level == 0 and (module == "cellfleet" or module.startswith("cellfleet.")) \
                and not module.startswith(("cellfleet.kernel", "cellfleet.extension",
                                           "cellfleet.widgets")):
            node.module = "ray" + module[len("cellfleet"):]
        return node


_BOOK: SubmissionBook | None = None  # the connected backend's (Ray's submission is patched once)


def _record(result: Any, actor: bool, tag: str | None = None) -> None:
    book = _BOOK
    if book is None:
        return
    refs = result if isinstance(result, list) else [result]
    tag = _cell_tag.get() if tag is None else tag
    for ref in refs:
        task_id = getattr(ref, "task_id", None)
        if task_id is None:
            return  # a generator or a handle: its lines go to the running cell
        hex_id = task_id().hex()
        book.submitted(tag, hex_id, ref, actor)
        try:
            ref.future().add_done_callback(lambda _f, t=hex_id, b=book: b.finished(t))
        except Exception:  # noqa: BLE001 - a ref without a future: forgotten when bounded
            pass
        if len(refs) > 1:
            return  # one task, several returns


def _record_actor(handle: Any) -> None:
    """An actor's constructor prints as its creation task: that task is the cell's too."""
    book = _BOOK
    if book is None:
        return
    try:
        from ray._raylet import TaskID

        task_id = TaskID.for_actor_creation_task(handle._actor_id).hex()
    except Exception:  # noqa: BLE001 - Ray's internals moved: lines go to the running cell
        return
    book.submitted(_cell_tag.get(), task_id, None, True)


class _ClientRecorder:
    """Ray Client refs learn their id from the server: record them from a thread, so that
    ``.remote()`` does not wait for a round trip."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name="cellfleet-ray-client-ids", daemon=True).start()

    def add(self, result: Any) -> None:
        self.queue.put((_cell_tag.get(), result))

    def _run(self) -> None:
        while True:
            tag, result = self.queue.get()
            try:
                _record(result, False, tag)
            except Exception:  # noqa: BLE001 - a ref whose call failed: nothing to route
                pass


def _patch_client(ray: types.ModuleType) -> None:
    """Ray Client's submissions all return through ``common.return_refs``."""
    try:
        from ray.util.client import common
    except ImportError:
        return
    original = common.return_refs
    if getattr(original, "_cellfleet", False):
        return
    recorder = _ClientRecorder()

    def return_refs(futures: Any) -> Any:
        result = original(futures)
        recorder.add(result)
        return result

    return_refs._cellfleet = True  # type: ignore[attr-defined]
    common.return_refs = return_refs


def _patch_submission(ray: types.ModuleType) -> None:
    """Wrap Ray's task, actor-task and actor submission once per process to record them."""
    import ray.actor
    import ray.remote_function

    targets = ((ray.remote_function.RemoteFunction, lambda r: _record(r, False)),
               (ray.actor.ActorMethod, lambda r: _record(r, True)),
               (ray.actor.ActorClass, _record_actor))
    for cls, record in targets:
        original = cls._remote
        if getattr(original, "_cellfleet", False):
            continue

        def wrapped(self: Any, *args: Any, __original: Callable = original,
                    __record: Callable = record, **kwargs: Any) -> Any:
            result = __original(self, *args, **kwargs)
            __record(result)
            return result

        wrapped._cellfleet = True  # type: ignore[attr-defined]
        cls._remote = wrapped
    _patch_client(ray)
    init = ray.init
    if not getattr(init, "_cellfleet", False):
        def init_once(*args: Any, **kwargs: Any) -> Any:
            """``ray.init`` in a cell of a connected kernel: the kernel's connection."""
            if ray.is_initialized():
                kwargs["ignore_reinit_error"] = True
            return init(*args, **kwargs)

        init_once._cellfleet = True  # type: ignore[attr-defined]
        ray.init = init_once


class _TaggedSource:
    """Ray's state for this kernel's views, each task tagged with the cell that submitted it
    (Ray's records do not know cells; the kernel's ``SubmissionBook`` does)."""

    def __init__(self, source: Any, tag_of: Callable[[str], str]) -> None:
        self.source = source
        self.tag_of = tag_of
        self.limits = source.limits

    async def ask(self, *messages: Any) -> list[Any]:
        answers = await self.source.ask(*messages)
        for answer in answers:
            records = answer.get("tasks") if isinstance(answer, dict) else answer
            for record in records if isinstance(records, list) else ():
                if isinstance(record, dict) and "task_id" in record and "state" in record:
                    record["tag"] = self.tag_of(record["task_id"]) or None
        return answers


class RayBackend(Backend):
    """An existing Ray cluster behind the kernel's backend interface."""

    name = "ray"

    def __init__(self) -> None:
        self.ray = import_ray()
        self.api = self.ray
        self.exceptions = self.ray.exceptions
        self.book = SubmissionBook()
        self.handler: LogHandler | None = None
        self._sink: Any = None
        self._puller: threading.Thread | None = None
        self._stop = threading.Event()
        self._cursor = 0
        self._routed = threading.Condition()
        self._context: Any = None
        self._address = ""
        self._remote_functions: dict[Callable, Any] = {}
        self._remote_classes: dict[type, Any] = {}

    # -- life cycle -------------------------------------------------------------------------

    def connect(self, address: str | None, *, num_cpus: float | int | None) -> dict:
        global _BOOK
        from .ray_output import SINK_ENV, OutputSink

        ray = self.ray
        namespace = os.environ.get(NAMESPACE_ENV, "cellfleet")
        sink_name = f"cellfleet-output-{uuid.uuid4().hex[:12]}"
        hook = "cellfleet.kernel.backends.ray_output.install"
        # Ray Client's server starts the job without turning the hook into the variable its
        # workers read: set that too (the same string, which Ray checks for consistency).
        runtime_env = {"worker_process_setup_hook": hook,
                       "env_vars": {SINK_ENV: f"{namespace}/{sink_name}",
                                    "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR": hook}}
        options: dict[str, Any] = {"namespace": namespace, "log_to_driver": False,
                                   "runtime_env": runtime_env, "configure_logging": False}
        if address is None:
            options["num_cpus"] = num_cpus
        _patch_submission(ray)
        self._context = ray.init(address=address, **options)
        self._address = address or ""
        _BOOK = self.book
        self._sink = ray.remote(OutputSink).options(
            name=sink_name, namespace=namespace, num_cpus=0).remote()
        self._stop.clear()
        self._cursor = 0
        self._puller = threading.Thread(target=self._pull, name="cellfleet-ray-output",
                                        daemon=True)
        self._puller.start()
        self._install_views()
        return {"address": self._gcs_address(), "session_dir": self._session_dir(),
                "dashboard": self._dashboard()}

    def _install_views(self) -> None:
        """The task-graph widget and the per-cell strip follow Ray's state API, polled."""
        from cellfleet.widgets import feed as views

        url = self._dashboard()
        if not url:
            return  # no state API: the views say there is no cluster to watch
        from .ray_state import RayStateSource

        source = _TaggedSource(RayStateSource(url), self.book.tag_of)
        polling = views.PollingFeed(self._gcs_address(), source)
        job_id = self.ray.get_runtime_context().get_job_id()
        views.use_feed(lambda: polling, lambda: job_id)

    def is_connected(self) -> bool:
        return self.ray.is_initialized() and self._sink is not None

    def shutdown(self) -> None:
        global _BOOK
        self._stop.set()
        if _BOOK is self.book:
            _BOOK = None
        self._sink = None
        from cellfleet.widgets import feed as views

        views.use_feed(None)
        if self.ray.is_initialized():
            self.ray.shutdown()
        if self._puller is not None:
            self._puller.join(timeout=PULL_TIMEOUT_S + 1)
            self._puller = None
        self._remote_functions.clear()
        self._remote_classes.clear()

    def connection(self) -> Any:
        return self._sink

    def _gcs_address(self) -> str:
        try:
            return self.ray.get_runtime_context().gcs_address
        except Exception:  # noqa: BLE001 - Ray Client: the address it was given
            return self._address

    def _session_dir(self) -> str | None:
        node = getattr(self.ray._private.worker, "_global_node", None)
        try:
            return node.get_session_dir_path() if node is not None else None
        except Exception:  # noqa: BLE001 - only decoration
            return None

    def _dashboard(self) -> str:
        url = os.environ.get(DASHBOARD_ENV) or getattr(self._context, "dashboard_url", "")
        if url and "://" not in url:
            url = "http://" + url
        return url

    def registration(self, info: dict) -> dict | None:
        if not info.get("address") or not info.get("dashboard"):
            return None  # no state API to read: the dashboard cannot show this cluster
        return {"address": info["address"],
                "token_file": os.environ.get("RAY_AUTH_TOKEN_PATH", ""),
                "session_dir": info.get("session_dir"), "backend": "ray",
                "state_url": info["dashboard"]}

    def logs_dir(self) -> str:
        session = self._session_dir()
        return os.path.join(session, "logs") if session else ""

    def describe(self, *, connected: bool) -> Any:
        from ..cluster import ClusterError, ClusterInfo, dashboard_url

        ray = self.ray
        try:
            raw = ray.nodes()
            available = _available_per_node(ray)
        except Exception as exc:  # noqa: BLE001 - a dead cluster gets one message
            raise ClusterError(f"the Ray cluster does not answer ({exc}); it may have "
                               "stopped.") from None
        nodes = [ray_node(node, available.get(node["NodeID"])) for node in raw]
        context = ray.get_runtime_context()
        address = self._gcs_address()
        return ClusterInfo(
            address=address, mode="connected" if connected else "local",
            session_dir=self._session_dir(), node_id=context.get_node_id(),
            job_id=context.get_job_id(), nodes=nodes,
            dashboard_url=dashboard_url(address), backend="ray",
        )

    # -- output -----------------------------------------------------------------------------

    def route_output(self, handler: LogHandler | None) -> None:
        self.handler = handler

    def _pull(self) -> None:
        """On its thread: long-poll the sink, route each line to its task's cell."""
        ray = self.ray
        sink, cursor = self._sink, 0
        while not self._stop.is_set() and sink is not None:
            try:
                cursor, lines, lost = ray.get(sink.pull.remote(cursor, PULL_TIMEOUT_S),
                                              timeout=PULL_TIMEOUT_S + 10)
            except Exception:  # noqa: BLE001 - a cluster going away, or shutting down
                self._stop.wait(0.5)  # back off before asking again
                continue
            handler = self.handler
            if lines and handler is not None:
                job = ""
                batch = [[job, self.book.tag_of(task_id), task_id, name or "task", pid,
                          stream, text] for task_id, name, pid, stream, text in lines]
                if lost:
                    batch.insert(0, [job, "", "", "cellfleet", os.getpid(), "stderr",
                                     f"[cellfleet] {lost} line(s) of task output were lost"])
                try:
                    handler(batch)
                except Exception:  # noqa: BLE001 - a closing kernel must not stop the thread
                    pass
            with self._routed:
                self._cursor = cursor
                self._routed.notify_all()

    def output_barrier(self, timeout: float = 0.5) -> None:
        """Lines a finished task sent before returning are in the sink: wait until the lines
        up to the sink's newest one have been routed."""
        sink = self._sink
        if sink is None:
            return
        deadline = time.monotonic() + timeout
        try:
            mark = self.ray.get(sink.mark.remote(), timeout=timeout)
        except Exception:  # noqa: BLE001 - a slow or dead cluster only delays output
            return
        with self._routed:
            while self._cursor < mark:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._routed.wait(left)

    @contextlib.contextmanager
    def cell(self, tag: str) -> Iterator[None]:
        token = _cell_tag.set(tag)
        try:
            yield
        finally:
            _cell_tag.reset(token)

    def current_tag(self) -> str:
        return _cell_tag.get()

    def source_transformer(self) -> ast.NodeTransformer | None:
        return ImportRewriter()

    # -- submitting -------------------------------------------------------------------------

    def _options(self, options: TaskOptions) -> dict[str, Any]:
        out = options.resource_options()
        if options.node_id:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            out["scheduling_strategy"] = NodeAffinitySchedulingStrategy(options.node_id,
                                                                        soft=False)
        return out

    def submit(self, function: Callable, args: tuple, kwargs: dict,
               options: TaskOptions) -> Any:
        remote = self._remote_functions.get(function)
        if remote is None:
            remote = self._remote_functions[function] = self.ray.remote(function)
        return remote.options(name=options.name, max_retries=0,
                              **self._options(options)).remote(*args, **kwargs)

    def actor(self, cls: type, name: str, options: TaskOptions) -> Any:
        remote = self._remote_classes.get(cls)
        if remote is None:
            remote = self._remote_classes[cls] = self.ray.remote(cls)
        return remote.options(name=name, get_if_exists=True,
                              **self._options(options)).remote()

    def call(self, actor: Any, method: str, args: tuple, kwargs: dict, name: str) -> Any:
        return getattr(actor, method).options(name=name).remote(*args, **kwargs)

    def is_ref(self, value: Any) -> bool:
        return isinstance(value, self.ray.ObjectRef)

    def get(self, refs: list) -> list:
        return self.ray.get(refs)

    def on_done(self, ref: Any, callback: Callable[[Callable[[], Any]], None]) -> None:
        ref.future().add_done_callback(lambda future: callback(future.result))

    def nodes(self) -> list[NodeSummary]:
        return [NodeSummary(n["NodeID"], bool(n["Alive"])) for n in self.ray.nodes()]

    # -- cancelling -------------------------------------------------------------------------

    def _cancel(self, pairs: list[tuple[Any, bool]]) -> None:
        for ref, force in pairs:
            try:
                self.ray.cancel(ref, force=force, recursive=True)
            except ValueError:  # an actor's task (Ray Client does not say so): not forced
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref, force=False, recursive=True)
            except Exception:  # noqa: BLE001 - best effort: the task may have just finished
                pass

    def _carry_out(self, plan: CancelPlan, force: bool) -> int:
        pairs = plan.first(force)
        if not pairs:
            return 0
        self._cancel(pairs)
        refs = [ref for ref, _ in plan.refs]
        _, running = self.ray.wait(refs, num_returns=len(refs), timeout=FORCE_AFTER_S,
                                   fetch_local=False)
        self._cancel(plan.escalate(set(running)))
        return len(pairs)

    def _run(self, plan: CancelPlan, force: bool, background: bool) -> int | None:
        if background:
            threading.Thread(target=self._carry_out, args=(plan, force),
                             name="cellfleet-ray-cancel", daemon=True).start()
            return None
        return self._carry_out(plan, force)

    def cancel_cell(self, tag: str, *, force: bool = False,
                    background: bool = False) -> int | None:
        return self._run(self.book.plan(tag), force, background)

    def cancel_refs(self, refs: list, *, force: bool = False,
                    background: bool = False) -> int | None:
        plan = CancelPlan([(ref, False) for ref in refs], again=False)
        return self._run(plan, force, background)


def _available_per_node(ray: types.ModuleType) -> dict[str, dict]:
    """Node id -> its free resources (Ray's GCS view; {} where this Ray cannot say)."""
    try:
        from ray._private.state import available_resources_per_node

        return available_resources_per_node()
    except Exception:  # noqa: BLE001 - an internal API: the totals are shown then
        return {}


def ray_node(node: dict, available: dict | None) -> dict:
    """A node of ``ray.nodes()`` in the shape ``%cluster`` and the views use."""
    total = {k: v for k, v in (node.get("Resources") or {}).items()
             if not k.startswith("node:")}
    return {
        "node_id": bytes.fromhex(node["NodeID"]),
        "raylet_address": f"{node.get('NodeManagerAddress')}:{node.get('NodeManagerPort')}",
        "alive": bool(node.get("Alive")),
        "resources": total,
        "available": dict(available) if available is not None else dict(total),
        "store": {"capacity": total.get("object_store_memory", 0), "used": 0,
                  "num_objects": 0},
        "death_reason": node.get("DeathReasonMessage") or "",
    }
