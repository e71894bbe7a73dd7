"""The driver side of ``%%remote``: ship names, submit the cell, bring its names back.

The cell body becomes a task (``remote_exec.run_cell``) that execs it in a fresh namespace
holding the names it reads from the notebook: values by cloudpickle, ``ObjectRef``s by
reference, modules by name. The task returns the names the cell assigned and the value of
its last expression. ``--actor NAME`` runs the body in a named actor instead, whose namespace
persists from cell to cell.
"""

from __future__ import annotations

import difflib
import importlib
import json
import keyword
import re
import threading
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .analysis import analyze, analyze_expression
from .backends import Backend, TaskOptions
from .remote_exec import TRACEBACK_ATTR, CellNamespace, ModuleByName, probe, run_cell
from .tracebacks import RemoteCellInterrupted, user_traceback

__all__ = ["RemoteCellError", "RemoteCellHandle", "RemoteOptions", "RemoteRunner",
           "UnshippableError", "parse_options", "unknown_option"]

# Names IPython puts in the user namespace that a remote cell never needs.
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "_ih", "_oh", "_dh", "_",
                  "__", "___", "_i", "_ii", "_iii", "__builtins__", "__name__", "__doc__",
                  "__package__", "__loader__", "__spec__", "__builtin__"}
_HIDDEN_RE = re.compile(r"^_i{1,3}$|^_i\d+$|^_\d+$")


class UnshippableError(TypeError):
    """A name the cell reads cannot be sent to the cluster (raised before anything runs)."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31mUnshippableError\x1b[0m: {self}"]


class CellSyntaxError(Exception):
    """A ``%%remote`` cell that does not parse (shown like a SyntaxError, without frames)."""

    def __init__(self, error: SyntaxError) -> None:
        super().__init__(str(error))
        self.lines = traceback.format_exception_only(type(error), error)

    def _render_traceback_(self) -> list[str]:
        return [line.rstrip("\n") for line in self.lines]


CellSyntaxError.__name__ = CellSyntaxError.__qualname__ = "SyntaxError"


class RemoteCellError(RuntimeError):
    """A remote cell failed in a way that has no exception of its own (e.g. lost worker)."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


def _unquote(text: str | None) -> str | None:
    """IPython's magic argument parser keeps the quotes around a quoted value."""
    if text is not None and len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _names(text: str | None, option: str) -> list[str] | None:
    text = _unquote(text)
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name):
            from IPython.core.error import UsageError

            raise UsageError(f"{option}: {name!r} is not a Python name")
    return names


def unknown_option(given: str, options: list[str], magic: str) -> str:
    """The message for an option ``magic`` does not have: the closest one, and the list."""
    name = given.split("=", 1)[0]
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    guess = f": did you mean {close[0]}?" if close else ""
    return (f"{magic}: unknown option {name}{guess} Options: {', '.join(options)} "
            f"('{magic}?' explains each).")


def parse_options(magic_func: Any, line: str, magic: str) -> Any:
    """Parse a magic's options with its ``magic_arguments`` parser, refusing abbreviations
    (``--num-cpu``) and answering a typo with the closest option."""
    from IPython.core.error import UsageError

    parser = magic_func.parser
    parser.allow_abbrev = False
    options = [s for action in parser._actions for s in action.option_strings]
    try:
        return parser.parse_argstring(line)
    except UsageError as exc:
        text = str(exc)
        if text.startswith("unrecognized arguments:"):
            given = [word for word in text.split(":", 1)[1].split() if word.startswith("-")]
            if given:
                raise UsageError(unknown_option(given[0], options, magic)) from None
        raise UsageError(f"{magic}: {text} ('{magic}?' lists the options)") from None


@dataclass
class RemoteOptions:
    """The options of one ``%%remote`` cell (see ``magics.remote``)."""

    push: list[str] | None = None
    pull: list[str] | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: dict[str, float] = field(default_factory=dict)
    name: str | None = None
    nowait: bool = False
    actor: str | None = None
    all_nodes: bool = False
    node: str | None = None

    @classmethod
    def from_args(cls, args: Any) -> RemoteOptions:
        from IPython.core.error import UsageError

        resources = {}
        if args.resources:
            try:
                resources = json.loads(_unquote(args.resources))
            except ValueError as exc:
                raise UsageError(f"--resources is not valid JSON: {exc}") from None
            if not isinstance(resources, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and v >= 0
                for k, v in resources.items()
            ):
                raise UsageError('--resources must map names to numbers, e.g. \'{"custom": 1}\'')
            if "CPU" in resources or "GPU" in resources:
                raise UsageError("--resources: use --num-cpus and --num-gpus for CPU and GPU")
        for option, value in (("--num-cpus", args.num_cpus), ("--num-gpus", args.num_gpus)):
            if value is not None and value < 0:
                raise UsageError(f"{option} must be >= 0")
        if args.actor is not None and (args.all_nodes or args.node):
            raise UsageError("--actor cannot be combined with --all-nodes or --node")
        if args.all_nodes and args.node:
            raise UsageError("--all-nodes and --node exclude each other")
        if args.nowait and args.all_nodes:
            raise UsageError("--nowait cannot be combined with --all-nodes")
        return cls(
            push=_names(args.push, "--push"), pull=_names(args.pull, "--pull"),
            num_cpus=args.num_cpus, num_gpus=args.num_gpus, resources=resources,
            name=_unquote(args.name), nowait=args.nowait, actor=_unquote(args.actor),
            all_nodes=args.all_nodes, node=_unquote(args.node),
        )

    def task_options(self, default_name: str, node_id: str | None = None) -> TaskOptions:
        """What the cell's task asks of the backend."""
        return TaskOptions(name=self.name or default_name, num_cpus=self.num_cpus,
                           num_gpus=self.num_gpus, resources=dict(self.resources),
                           node_id=node_id)


LARGE_VALUE_BYTES = 100 * 2**20  # a name this large gets one suggestion to put() it
MAX_WARNED_NAMES = 1_000


def _describe(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" \
        else kind.__qualname__


class RemoteCellHandle:
    """What ``%%remote --nowait`` returns: the cell runs on; its names arrive when done."""

    def __init__(self, runner: RemoteRunner, ref: Any, cell: str, tag: str) -> None:
        self._runner = runner
        self.ref = ref
        self.cell = cell
        self._tag = tag
        self._done = threading.Event()
        self._outcome: tuple[bool, Any] | None = None

    def _finished(self, result: Any) -> None:
        """On the backend's thread: put the names in the namespace, report errors."""
        try:
            payload = result()
        except BaseException as exc:  # noqa: BLE001 - shown in the cell that started it
            self._outcome = (False, exc)
            self._runner.report_async_error(self._tag, self.cell, exc)
        else:
            self._outcome = (True, payload.get("result"))
            self._runner.apply(payload, tag=self._tag)
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the cell is over (its names are in the namespace then)."""
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The value of the cell's last expression; raises the cell's error."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.cell} is still running")
        ok, value = self._outcome
        if not ok:
            raise value
        return value

    def cancel(self, force: bool = False) -> None:
        self._runner.backend().cancel_refs([self.ref], force=force)

    @property
    def status(self) -> str:
        if not self._done.is_set():
            return "running"
        return "done" if self._outcome[0] else "failed"

    def __repr__(self) -> str:
        return f"<RemoteCellHandle {self.cell}: {self.status}>"


class RemoteRunner:
    """Runs ``%%remote`` cells and ``%remote`` expressions for one kernel's shell."""

    def __init__(self, shell: Any, *, ensure_runtime: Callable[[], None],
                 write: Callable[[str, str, str], None], tag: Callable[[], str],
                 backend: Callable[[], Backend]) -> None:
        self.shell = shell
        self.ensure_runtime = ensure_runtime
        self.write = write  # (tag, text, stream): output into a cell
        self.tag = tag
        self.backend = backend  # the kernel's backend now (it changes on %cluster connect)
        self.actors: dict[str, tuple[Any, Any]] = {}  # name -> (connection, handle)
        self.actor_names: dict[str, set[str]] = {}
        self._warned_large: set[str] = set()  # names told once to use put()

    # -- what to ship -----------------------------------------------------------------------

    def _shippable_names(self, reads: list[str]) -> list[str]:
        ns = self.shell.user_ns
        hidden = getattr(self.shell, "user_ns_hidden", {})
        out = []
        for name in reads:
            if name in _IPYTHON_NAMES or _HIDDEN_RE.match(name) or name not in ns:
                continue
            if name in hidden and ns[name] is hidden[name] and name != "cellfleet":
                continue  # IPython's own (exit, get_ipython, ...), never the user's
            out.append(name)
        return out

    def collect(self, names: list[str], *, explicit: bool) -> tuple[dict, dict]:
        """Values (modules by name) and ObjectRefs for ``names``; UnshippableError if any fail."""
        ns = self.shell.user_ns
        backend = self.backend()
        values: dict[str, Any] = {}
        refs: dict[str, Any] = {}
        bad: list[str] = []
        for name in names:
            if name not in ns:
                if explicit:
                    bad.append(f"'{name}' (--push) is not defined in the notebook")
                continue
            value = ns[name]
            if backend.is_ref(value):
                refs[name] = value
            elif isinstance(value, types.ModuleType):
                if value.__name__ == "__main__":
                    bad.append(f"'{name}' is the notebook's __main__ module")
                else:
                    values[name] = ModuleByName(value.__name__)
            else:
                problem, size = probe(value)
                if problem is not None:
                    bad.append(f"'{name}' ({_describe(value)}): {problem}")
                else:
                    values[name] = value
                    if size > LARGE_VALUE_BYTES:
                        self._warn_large(name, value, size)
        if bad:
            raise UnshippableError(
                "cannot send " + "; ".join(bad) + ". Nothing ran. Create the object inside the "
                "cell, or list what to send with --push a,b."
            )
        return values, refs

    def _warn_large(self, name: str, value: Any, size: int) -> None:
        """Say once per name that a large value travels with every cell that reads it."""
        if name in self._warned_large or len(self._warned_large) >= MAX_WARNED_NAMES:
            return
        self._warned_large.add(name)
        self.write(self.tag(), f"[cellfleet] '{name}' ({_describe(value)}, {size / 1e9:.2f} GB) "
                   "is sent by value with every cell that reads it. Put it in the object store "
                   f"once: {name}_ref = cellfleet.put({name}), and read "
                   f"cellfleet.get({name}_ref) in the cell (same node: no copy).\n", "stderr")

    # -- running ----------------------------------------------------------------------------

    def run(self, opts: RemoteOptions, body: str, *, header: str, line_offset: int,
            mode: str = "exec") -> Any:
        """Run a cell body (``exec``) or one expression (``eval``) as a task; its result.

        An interrupt shows the cell and the interruption, not the magic's plumbing.
        """
        try:
            return self._run(opts, body, header=header, line_offset=line_offset, mode=mode)
        except RemoteCellInterrupted:
            raise
        except KeyboardInterrupt:
            count = self._cell_number()
            raise RemoteCellInterrupted(header + body, count,
                                        opts.name or f"cell-{count}") from None

    def _cell_number(self) -> int:
        """The running cell's In[N]. IPython 9 counts the cell before running it, IPython 8
        (the newest on Python 3.10) after: the running cell's own result knows its number."""
        running = getattr(getattr(self.shell, "displayhook", None), "exec_result", None)
        count = getattr(running, "execution_count", None)
        if count is not None:
            return count
        return max(getattr(self.shell, "execution_count", 1) - 1, 0)

    def _run(self, opts: RemoteOptions, body: str, *, header: str, line_offset: int,
             mode: str) -> Any:
        count = self._cell_number()
        filename = f"<cell-{count}>"
        if not body.strip():
            from IPython.core.error import UsageError

            raise UsageError("%%remote needs a cell body" if mode == "exec"
                             else "%remote needs an expression")
        padded = "\n" * line_offset + body
        try:
            names = analyze(padded, filename) if mode == "exec" \
                else analyze_expression(padded.strip(), filename)
        except SyntaxError as exc:
            raise CellSyntaxError(exc) from None
        self.ensure_runtime()
        if opts.push is not None:
            to_ship, explicit = opts.push, True
        else:
            to_ship, explicit = self._shippable_names(names.reads), False
            if opts.actor is not None:  # the actor's own names need not travel
                actor = self.actors.get(opts.actor)
                current = actor is not None and actor[0] is self.backend().connection()
                known = self.actor_names.get(opts.actor, set()) if current else set()
                to_ship = [n for n in to_ship if n not in known]
        values, refs = self.collect(to_ship, explicit=explicit)
        if opts.pull is not None:
            pull = opts.pull
        elif opts.actor is not None or opts.all_nodes or mode == "eval":
            pull = []
        else:
            pull = names.assigns
        task_name = opts.name or f"cell-{count}"
        kwargs = dict(values)
        if refs:
            kwargs["__cellfleet_refs__"] = refs
        if opts.actor is not None and opts.push is None:
            kwargs = {"__cellfleet_defaults__": values, **(
                {"__cellfleet_refs__": refs} if refs else {})}
        args = (body, filename, header, line_offset, mode, pull)
        tag = self.tag()
        if opts.all_nodes:
            return self._run_all_nodes(opts, args, kwargs, task_name, pull)
        backend = self.backend()
        node_id = self._check_node(opts.node) if opts.node else None
        try:
            if opts.actor is not None:
                ref = backend.call(self._actor(opts), "run", args, kwargs, task_name)
            else:
                ref = backend.submit(run_cell, args, kwargs,
                                     opts.task_options(task_name, node_id))
        except TypeError as exc:
            if "serialize" in str(exc) or "pickle" in str(exc):
                raise UnshippableError(f"{exc}. Nothing ran.") from None
            raise
        if opts.nowait:
            handle = RemoteCellHandle(self, ref, task_name, tag)
            backend.on_done(ref, handle._finished)
            return handle
        payload = self._get([ref])[0]
        if opts.actor is not None:
            self.actor_names[opts.actor] = set(payload.get("names", ()))
        self.apply(payload, tag=tag)
        return payload.get("result")

    def _get(self, refs: list) -> list:
        backend = self.backend()
        errors = backend.exceptions
        try:
            return backend.get(refs)
        except KeyboardInterrupt:
            backend.cancel_refs(refs, background=True)
            raise
        except errors.RayTaskError as exc:
            raise_remote_error(exc)
        except errors.TaskCancelledError:
            raise RemoteCellError("the remote cell was cancelled") from None
        except errors.RayError as exc:
            raise RemoteCellError(f"{type(exc).__name__}: {exc}") from None

    def _run_all_nodes(self, opts: RemoteOptions, args: tuple, kwargs: dict, task_name: str,
                       pull: list[str]) -> dict:
        backend = self.backend()
        nodes = [n for n in backend.nodes() if n.alive]
        refs = []
        affinity = backend.node_affinity_available()
        for node in nodes:
            options = opts.task_options(f"{task_name}@{node.node_id[:8]}",
                                        node.node_id if affinity else None)
            refs.append(backend.submit(run_cell, args, kwargs, options))
        if not affinity and len(nodes) > 1:
            self.write(self.tag(), "[cellfleet] node affinity is not available yet: the "
                       f"{len(nodes)} copies may not land on {len(nodes)} different nodes\n",
                       "stderr")
        payloads = self._get(refs)
        results: dict[str, Any] = {}
        pulled: dict[str, dict[str, Any]] = {name: {} for name in pull}
        for node, payload in zip(nodes, payloads):
            node_id = payload.get("node_id") or node.node_id
            results[node_id] = payload.get("result")
            for name, value in payload.get("values", {}).items():
                pulled[name][node_id] = value
        ns = self.shell.user_ns
        for name, by_node in pulled.items():
            if by_node:
                ns[name] = by_node
        return results

    def _check_node(self, node: str) -> str:
        """The full id of the live node ``node`` starts; UsageError if there is none."""
        backend = self.backend()
        alive = [n.node_id for n in backend.nodes() if n.alive]
        matches = [n for n in alive if n.startswith(node.lower())]
        if len(matches) != 1:
            from IPython.core.error import UsageError

            what = "no live node has" if not matches else "several live nodes have"
            raise UsageError(f"--node {node}: {what} that id (live: "
                             f"{', '.join(a[:12] for a in alive)})")
        if not backend.node_affinity_available() and len(alive) > 1:
            self.write(self.tag(), "[cellfleet] node affinity is not available yet: --node is "
                       "recorded but the task may run on any node\n", "stderr")
        return matches[0]

    def _actor(self, opts: RemoteOptions) -> Any:
        backend = self.backend()
        connection = backend.connection()
        known = self.actors.get(opts.actor)
        if known is not None and known[0] is connection:
            return known[1]
        self.actor_names.pop(opts.actor, None)  # a new runtime: a new actor
        handle = backend.actor(CellNamespace, opts.actor, opts.task_options(opts.actor))
        self.actors[opts.actor] = (connection, handle)
        return handle

    def forget_actors(self) -> None:
        self.actors.clear()
        self.actor_names.clear()

    # -- bringing names back ------------------------------------------------------------

    def apply(self, payload: dict, *, tag: str) -> None:
        """Put a cell's assigned names into the notebook namespace; say what stayed behind."""
        ns = self.shell.user_ns
        ns.update(payload.get("values", {}))
        for name, module in payload.get("modules", {}).items():
            try:
                ns[name] = importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - reported, the rest still lands
                self.write(tag, f"[cellfleet] '{name}' stays remote: module {module} cannot be "
                           f"imported here ({exc})\n", "stderr")
        for name, why in payload.get("unpulled", {}).items():
            what = "the last expression's value" if name == "Out" else f"'{name}'"
            self.write(tag, f"[cellfleet] {what} stays remote: it cannot be pickled ({why})\n",
                       "stderr")

    def report_async_error(self, tag: str, cell: str, exc: BaseException) -> None:
        lines = render_remote_error(exc) \
            if isinstance(exc, self.backend().exceptions.RayTaskError) \
            else [f"{type(exc).__name__}: {exc}"]
        self.write(tag, f"[cellfleet] {cell} (--nowait) failed:\n" + "\n".join(lines) + "\n",
                   "stderr")


def render_remote_error(exc: BaseException) -> list[str]:
    """A remote cell's error as the lines of its traceback from the cell's own code on."""
    cause = getattr(exc, "cause", None)
    text = getattr(cause, TRACEBACK_ATTR, None) if cause is not None else None
    if text is None:
        text = getattr(exc, "traceback_str", None)
        text = user_traceback(text) if text else f"{type(exc).__name__}: {exc}"
    where = ", ".join(f"{k}={v}" for k, v in (("pid", getattr(exc, "pid", None)),
                                                ("ip", getattr(exc, "ip", None))) if v)
    header = f"\x1b[0;31mRemote error\x1b[0m in {getattr(exc, 'function_name', 'task')}" + \
        (f" ({where})" if where else "") + ":"
    return [header, *text.rstrip().splitlines()]


def raise_remote_error(exc: BaseException) -> None:
    """Raise a remote cell's exception as itself, shown with the remote traceback only."""
    lines = render_remote_error(exc)
    cause = getattr(exc, "cause", None)
    error = cause if isinstance(cause, Exception) else exc
    try:
        error._render_traceback_ = lambda: lines
    except Exception:  # noqa: BLE001 - an exception without a __dict__
        error = RemoteCellError("\n".join(lines[1:]))
    raise error from None

