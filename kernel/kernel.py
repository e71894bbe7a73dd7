"""``CellfleetKernel``: IPython's kernel with the runtime built in.

* On start it answers at once and starts the runtime in a background thread (a local one, or
  a connection to ``CELLFLEET_ADDRESS``); a cell waits for it only if it runs before the
  runtime is up. ``cellfleet`` is imported in the user namespace.
* Each cell runs inside its backend's ``cell(msg_id)`` (``backends``: cellfleet's runtime or
  a Ray cluster), so the tasks it submits print into this cell, even after other cells ran.
* An interrupted cell cancels the remote work it started.
* On the Ray backend ``cellfleet`` in the namespace is Ray's module and ``import cellfleet``
  imports Ray: the same notebook runs on either.
* Shutdown and restart stop the runtime (a connected cluster keeps running).
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

import IPython.core
from ipykernel.ipkernel import IPythonKernel
from traitlets import Float, Integer, Unicode, default

import cellfleet

from . import control
from .backends import Backend
from .cellstrip import CellStrips
from .cluster import KernelRuntime, parse_num_cpus
from .magics import CellfleetMagics
from .output import OutputRouter, hold_results_for_output
from .progress import ProgressReporter
from .remote import RemoteRunner
from .tracebacks import user_traceback

__all__ = ["CellfleetKernel"]

_CONNECTION_ERRORS = (ConnectionError, cellfleet.exceptions.AuthenticationError)
_RUNTIME_ERRORS = (KeyboardInterrupt, TimeoutError, cellfleet.exceptions.RayError,
                   *_CONNECTION_ERRORS)


class CellfleetKernel(IPythonKernel):
    """A Python kernel whose cells can run work on a cellfleet cluster."""

    implementation = "cellfleet"
    implementation_version = cellfleet.__version__

    address = Unicode(
        help="Connect to the cluster at HOST:PORT (or 'auto') instead of starting a local "
             "runtime. Default: $CELLFLEET_ADDRESS."
    ).tag(config=True)
    num_cpus = Float(
        None, allow_none=True,
        help="CPUs of the local runtime (default: $CELLFLEET_NUM_CPUS, else all)."
    ).tag(config=True)
    output_rate_limit = Integer(
        1000, help="Lines a second a cell's tasks may print before lines are dropped."
    ).tag(config=True)
    progress_after = Float(
        1.0, help="Seconds a get/wait on many refs runs before a progress bar shows "
                  "(negative: never)."
    ).tag(config=True)
    progress_min_refs = Integer(
        2, help="The fewest refs a get/wait must wait on to show a progress bar."
    ).tag(config=True)

    @default("address")
    def _default_address(self) -> str:
        return os.environ.get("CELLFLEET_ADDRESS", "")

    @default("num_cpus")
    def _default_num_cpus(self) -> float | None:
        try:
            value = parse_num_cpus(os.environ.get("CELLFLEET_NUM_CPUS"))
        except ValueError:
            return None
        return None if value is None else float(value)

    @property
    def banner(self) -> str:  # type: ignore[override]
        return super().banner + f"cellfleet {cellfleet.__version__}: %cluster, %%remote\n"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.router = OutputRouter(self.session, self.iopub_socket,
                                   rate_limit=self.output_rate_limit,
                                   logs_hint=lambda: self.runtime.logs_dir())
        num_cpus = self.num_cpus
        if num_cpus is not None and float(num_cpus).is_integer():
            num_cpus = int(num_cpus)
        self.runtime = KernelRuntime(address=self.address or None, num_cpus=num_cpus,
                                     log_handler=self.router.handle)
        self.remote_runner = RemoteRunner(
            self.shell, ensure_runtime=self.runtime.ensure,
            write=lambda tag, text, stream: self.router.write(tag, text, stream),
            tag=lambda: self.runtime.backend.current_tag(), backend=lambda: self.runtime.backend,
        )
        self.progress = ProgressReporter(after=self.progress_after,
                                         min_refs=self.progress_min_refs)
        self.strips = CellStrips(lambda kind, content, parent: self.session.send(
            self.iopub_socket, kind, content, parent=parent))
        shell = self.shell
        self._synced: Backend | None = None
        self._transformer: Any = None
        self._sync_backend()
        shell.register_magics(CellfleetMagics(shell, self))
        shell.events.register("post_run_cell", self._post_run_cell)
        shell.set_custom_exc(_RUNTIME_ERRORS, _render_runtime_error)
        hold_results_for_output(shell, self.runtime.output_barrier)
        control.install(self)  # the dashboard's cancel and objects requests
        self.runtime.start(background=True)

    # -- cells --------------------------------------------------------------------------

    async def execute_request(self, stream: Any, ident: Any, parent: dict) -> None:
        silent = bool((parent.get("content") or {}).get("silent"))
        msg_id = self.router.register_cell(parent, latest=not silent)
        with self.runtime.backend.cell(msg_id):
            await super().execute_request(stream, ident, parent)

    async def do_execute(self, code: str, silent: bool, store_history: bool = True,
                         user_expressions: dict | None = None, allow_stdin: bool = False,
                         **cell_info: Any) -> dict:
        """Run a cell (``cell_info``: ``cell_id``/``cell_meta``, as this ipykernel passes)."""
        if self.runtime.starting and not silent:
            try:
                self.runtime.wait()
            except KeyboardInterrupt:
                pass  # the cell runs; whatever needs the runtime waits again
        problem = None if silent else self.runtime.take_unreported_error()
        if problem is not None:
            print(f"cellfleet: {problem}", file=sys.stderr)
        self.runtime.hook()
        self._sync_backend()
        backend = self.runtime.backend
        tag = backend.current_tag()
        if not silent:
            self.strips.cell_started(tag, self.get_parent(),
                                     f"In [{self.shell.execution_count}]")
        try:
            reply = await super().do_execute(code, silent, store_history, user_expressions,
                                             allow_stdin, **cell_info)
        finally:
            self.strips.cell_finished(tag)
        if reply.get("status") == "error" and reply.get("ename") in ("KeyboardInterrupt",
                                                                      "CancelledError"):
            self.runtime.backend.cancel_cell(tag, background=True)
        elif not silent:
            self.runtime.output_barrier()
        return reply

    def _post_run_cell(self, result: Any) -> None:
        self.runtime.hook()  # the cell may have called cellfleet.init() itself
        self._sync_backend()  # or '%cluster connect' chose another backend

    def _sync_backend(self) -> None:
        """Bind ``cellfleet`` in the notebook to the backend's API, its progress bars and its
        cell rewrite, when the backend changed."""
        backend = self.runtime.backend
        if backend is self._synced:
            return
        self._synced = backend
        self.shell.push({"cellfleet": backend.api}, interactive=False)
        self.progress.uninstall()
        self.progress.install(backend.api)
        transformers = self.shell.ast_transformers
        if self._transformer is not None and self._transformer in transformers:
            transformers.remove(self._transformer)
        self._transformer = backend.source_transformer()
        if self._transformer is not None:
            transformers.append(self._transformer)

    # -- life cycle ---------------------------------------------------------------------

    def do_shutdown(self, restart: bool) -> dict:
        try:
            self.runtime.stop()
        except Exception:  # noqa: BLE001 - the kernel goes away regardless
            self.log.warning("stopping the cellfleet runtime failed", exc_info=True)
        return super().do_shutdown(restart)


def _package_dir(module: types.ModuleType) -> str:
    return os.path.dirname(os.path.abspath(module.__file__)) + os.sep


# The runtime (cellfleet), this kernel (cellfleet.kernel, elsewhere in an editable install).
_CELLFLEET_DIRS = (_package_dir(cellfleet), _package_dir(sys.modules[__package__]))
_INTERNAL_DIRS = (*_CELLFLEET_DIRS, _package_dir(IPython.core))


def _filename(tb: Any) -> str:
    return os.path.abspath(tb.tb_frame.f_code.co_filename)


def _user_frames(tb: Any) -> tuple[Any, bool]:
    """The traceback cut at the first cellfleet or IPython frame after the cell's own, and
    whether it reaches into cellfleet at all."""
    entries = []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    if not any(_filename(t).startswith(_CELLFLEET_DIRS) for t in entries[1:]):
        return None, False
    kept = [entries[0]]
    for entry in entries[1:]:
        if _filename(entry).startswith(_INTERNAL_DIRS):
            break
        kept.append(entry)
    cut = None
    for entry in reversed(kept):
        cut = types.TracebackType(cut, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return cut, True


def _render_runtime_error(shell: Any, etype: type, value: BaseException, tb: Any,
                          tb_offset: int | None = None) -> list[str] | None:
    """Errors raised inside cellfleet (an interrupted ``get``, a lost connection, a task's
    error): the cell's own frames and the error, never the runtime's internals."""
    if isinstance(value, cellfleet.exceptions.RayTaskError):  # the worker's frames: the user's
        value.traceback_str = user_traceback(value.traceback_str)
    cut, entered = _user_frames(tb)
    if not entered:
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
        return None
    if isinstance(value, _CONNECTION_ERRORS):
        stb = [f"\x1b[0;31m{etype.__name__}\x1b[0m: cellfleet could not reach the cluster: "
               f"{value}. '%cluster' shows the cluster; '%cluster restart' or "
               "'%cluster connect HOST:PORT' gets a new connection."]
        shell._showtraceback(etype, value, stb)
        return stb
    shell.showtraceback((etype, value, cut), tb_offset=tb_offset)
    return None
