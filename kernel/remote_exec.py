"""What runs on the worker for ``%%remote``: execute a cell's code in a namespace.

This module is imported by workers, so it must stay light (no IPython, no ipykernel).
The cell's source is registered in ``linecache`` under its own filename (``<cell-N>``) so a
traceback shows the cell's lines with the line numbers the notebook shows.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import linecache
import os
import traceback
import types
from typing import Any

import cloudpickle

__all__ = ["CellNamespace", "ModuleByName", "execute", "probe", "run_cell"]

TRACEBACK_ATTR = "_cellfleet_traceback"


class ModuleByName:
    """A module shipped by name: imported again on the other side."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def load(self) -> types.ModuleType:
        return importlib.import_module(self.name)

    def __reduce__(self):
        return ModuleByName, (self.name,)

    def __repr__(self) -> str:
        return f"ModuleByName({self.name!r})"


def register_source(filename: str, source: str) -> None:
    lines = source.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    linecache.cache[filename] = (len(source), None, lines, filename)


def _cell_traceback(exc: BaseException, filename: str) -> str:
    """The exception formatted from its first frame in the cell on (no runtime frames)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def probe(value: Any) -> tuple[str | None, int]:
    """Why ``value`` cannot be pickled (or None), and its pickled size (large buffers are
    measured, not copied)."""
    sizes: list[int] = []

    def buffer(view: Any) -> bool:
        sizes.append(view.raw().nbytes)
        return False  # kept out of band: only measured

    try:
        pickled = cloudpickle.dumps(value, protocol=5, buffer_callback=buffer)
    except Exception as exc:  # noqa: BLE001 - any pickling failure is reported by name
        return f"{type(exc).__name__}: {exc}", 0
    return None, len(pickled) + sum(sizes)


def compile_cell(source: str, filename: str, line_offset: int, mode: str):
    """Compile a cell (``exec``: its body and optional last expression) or one expression.

    ``line_offset`` blank lines go first, so line numbers are the cell's own (its magic line
    included).
    """
    padded = "\n" * line_offset + source
    if mode == "eval":
        return None, compile(padded.rstrip(), filename, "eval")
    tree = ast.parse(padded, filename, mode="exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = compile(ast.Expression(tree.body.pop().value), filename, "eval")
    return compile(tree, filename, "exec"), last


def execute(namespace: dict, source: str, filename: str, header: str, line_offset: int,
            mode: str, pull: list[str] | None, shipped: dict) -> dict:
    """Run ``source`` in ``namespace`` (updated with ``shipped``); what comes back.

    Returns ``{"values", "modules", "result", "unpulled", "pid"}``: the assigned names that
    can travel back (modules by name), the last expression's value and, by name, what
    could not be pickled.
    """
    register_source(filename, header + source)
    defaults = shipped.pop("__cellfleet_defaults__", None) or {}
    for name, value in shipped.items():
        namespace[name] = value.load() if isinstance(value, ModuleByName) else value
    for name, value in defaults.items():  # an actor's own names win over the notebook's
        if name not in namespace:
            namespace[name] = value.load() if isinstance(value, ModuleByName) else value
    body, last = compile_cell(source, filename, line_offset, mode)
    try:
        if body is not None:
            exec(body, namespace)
        result = eval(last, namespace) if last is not None else None
    except SystemExit as exc:
        raise RuntimeError(f"the cell called exit({exc.code!r}); a %%remote cell cannot end "
                           "its worker") from None
    except Exception as exc:
        try:
            setattr(exc, TRACEBACK_ATTR, _cell_traceback(exc, filename))
        except Exception:  # noqa: BLE001 - an exception that refuses attributes
            pass
        raise
    values: dict[str, Any] = {}
    modules: dict[str, str] = {}
    unpulled: dict[str, str] = {}
    for name in pull or ():
        if name not in namespace:
            continue
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            modules[name] = value.__name__
            continue
        problem, _ = probe(value)
        if problem is None:
            values[name] = value
        else:
            unpulled[name] = problem
    if result is not None:
        problem, _ = probe(result)
        if problem is not None:
            unpulled["Out"] = problem
            result = None
    return {"values": values, "modules": modules, "result": result, "unpulled": unpulled,
            "pid": os.getpid(), "node_id": _node_id(),
            "names": sorted(n for n in namespace if not n.startswith("__"))}


def _node_id() -> str:
    from cellfleet import _context

    core = _context.core
    return core.node_id.hex() if core is not None and core.node_id else ""


def run_cell(source: str, filename: str, header: str, line_offset: int, mode: str,
             pull: list[str] | None, /, **shipped: Any) -> dict:
    """The task ``%%remote`` submits: the cell in a fresh namespace."""
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    refs = shipped.pop("__cellfleet_refs__", None) or {}
    shipped.update(refs)
    return execute(namespace, source, filename, header, line_offset, mode, pull, shipped)


class CellNamespace:
    """The body of a ``%%remote --actor NAME`` actor: a namespace kept from call to call."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}

    def run(self, source: str, filename: str, header: str, line_offset: int, mode: str,
            pull: list[str] | None, /, **shipped: Any) -> dict:
        refs = shipped.pop("__cellfleet_refs__", None) or {}
        shipped.update(refs)
        return execute(self.namespace, source, filename, header, line_offset, mode, pull,
                       shipped)

    def names(self) -> list[str]:
        return sorted(n for n in self.namespace if not n.startswith("__"))

    def reset(self) -> None:
        self.namespace = {"__name__": "__main__", "__builtins__": builtins}
