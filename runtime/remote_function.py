"""``@remote`` on functions: ``RemoteFunction`` and its options."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from typing import Any

import cloudpickle

from .core.object_ref import ObjectRef

__all__ = ["ExportedCode", "RemoteFunction", "TASK_OPTIONS", "resources_from_options"]

TASK_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "num_returns", "max_retries", "retry_exceptions",
    "name", "memory", "scheduling_strategy",
}
_DEFAULTS = {"num_returns": 1, "max_retries": 3, "retry_exceptions": False}
LARGE_ARGUMENT_BYTES = 100 * 2**20  # passed by value above this: suggest put()
_SMALL_TYPES = (int, float, bool, type(None), ObjectRef)


def check_options(options: dict[str, Any], valid: set[str], what: str) -> None:
    unknown = set(options) - valid
    if unknown:
        raise ValueError(f"Invalid option keyword(s) {sorted(unknown)} for {what}. "
                         f"Valid ones are {sorted(valid)}.")
    for key in ("num_cpus", "num_gpus", "memory"):
        value = options.get(key)
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"{key} must be a non-negative number, got {value!r}")
    resources = options.get("resources")
    if resources is not None:
        if not isinstance(resources, dict):
            raise ValueError(f"resources must be a dict, got {type(resources).__name__}")
        if "CPU" in resources or "GPU" in resources:
            raise ValueError("Use the 'num_cpus' and 'num_gpus' keyword instead of 'CPU' and "
                             "'GPU' in 'resources' keyword")
    num_returns = options.get("num_returns")
    if num_returns is not None and (not isinstance(num_returns, int) or num_returns < 0):
        raise ValueError(f"num_returns must be a non-negative int, got {num_returns!r}")
    max_retries = options.get("max_retries")
    if max_retries is not None and (not isinstance(max_retries, int) or max_retries < -1):
        raise ValueError(f"max_retries must be an int >= -1 (-1: retry forever), "
                         f"got {max_retries!r}")


def resources_from_options(options: dict[str, Any], default_cpus: float) -> dict[str, float]:
    """Ray's resource options as one resource dict (zero entries dropped)."""
    out = {"CPU": float(options.get("num_cpus", default_cpus) or 0)}
    if options.get("num_gpus"):
        out["GPU"] = float(options["num_gpus"])
    if options.get("memory"):
        out["memory"] = float(options["memory"])
    out.update({k: float(v) for k, v in (options.get("resources") or {}).items()})
    return {k: v for k, v in out.items() if v > 0}


class ExportedCode:
    """What remote functions and actor classes share: their code, exported once per runtime.

    ``_registered`` is ``(core worker, function id)`` of the runtime it was exported to; it
    stays behind when the object is pickled (into a task, say), and re-exports after a new
    ``init``.
    """

    _registered: tuple[Any, bytes] | None
    _name: str

    def _function_id(self, core: Any, code: Any) -> bytes:
        if self._registered is None or self._registered[0] is not core:
            self._registered = (core, core.register_function(code, self._name))
        return self._registered[1]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_registered"] = None
        return state


class RemoteFunction(ExportedCode):
    """A function that runs as a task: ``f.remote(*args)`` returns ObjectRef(s) at once."""

    def __init__(self, function: Callable, options: dict[str, Any]) -> None:
        check_options(options, TASK_OPTIONS, "a remote function")
        self._function = function
        self._options = {**_DEFAULTS, **options}
        self._name = getattr(function, "__qualname__", getattr(function, "__name__", "task"))
        self._registered: tuple[Any, bytes] | None = None  # (core, function id)
        self._warned_large = [False]  # shared by the copies options() makes
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module = getattr(self._function, "__module__", "__main__")
        raise TypeError(
            "Remote functions cannot be called directly. Instead of running "
            f"'{module}.{self._name}()', try '{module}.{self._name}.remote()'."
        )

    def options(self, **options: Any) -> RemoteFunction:
        """A copy with these options changed (``num_cpus``, ``num_returns``, ``name``...)."""
        copy = RemoteFunction(self._function, {**self._options, **options})
        copy._registered = self._registered
        copy._warned_large = self._warned_large
        return copy

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef | list[ObjectRef] | None:
        from .api import _core

        core = _core()
        function_id = self._function_id(core, self._function)
        if not self._warned_large[0]:
            self._warn_if_large(args, kwargs)
        opts = self._options
        num_returns = opts["num_returns"]
        refs = core.submit_task(
            function_id, self._name, args, kwargs,
            num_returns=num_returns,
            resources=resources_from_options(opts, 1),
            max_retries=opts["max_retries"],
            retry_exceptions=_retry_exceptions(opts["retry_exceptions"]),
            task_name=opts.get("name"),
        )
        if num_returns == 1:
            return refs[0]
        return refs if num_returns else None

    def _warn_if_large(self, args: tuple, kwargs: dict) -> None:
        """Warn (once per function) that a large argument is copied on every call."""
        named = [(f"argument {i}", a) for i, a in enumerate(args)]
        named += [(f"argument {k!r}", v) for k, v in kwargs.items()]
        for where, value in named:
            size = _nbytes(value)
            if size <= LARGE_ARGUMENT_BYTES:
                continue
            self._warned_large[0] = True
            kind = type(value)
            warnings.warn(
                f"{self._name}.remote(): {where} ({kind.__module__}.{kind.__qualname__}, "
                f"{size / 1e9:.2f} GB) is passed by value, so every call serializes it and "
                "copies it into the object store. Put it there once and pass the ref: "
                f"ref = cellfleet.put(value), then {self._name}.remote(ref) (the task gets "
                "the value). This warning is shown once per function.",
                UserWarning, stacklevel=3)
            sys.stderr.flush()  # shown before the long copy starts (a notebook buffers stderr)
            return

    def __repr__(self) -> str:
        return f"RemoteFunction({self._name})"


def _nbytes(value: Any) -> int:
    """The size of a value known without serializing it (arrays, bytes, str), else 0."""
    if isinstance(value, _SMALL_TYPES):
        return 0
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    size = getattr(value, "nbytes", None)  # numpy, memoryview, pandas Series, torch tensors
    return size if isinstance(size, int) else 0


def _retry_exceptions(option: Any) -> bool | bytes:
    """``True``/``False``, or a list of exception types carried pickled to the worker."""
    if isinstance(option, (list, tuple)):
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in option):
            raise ValueError("retry_exceptions must be a bool or a list of exception types")
        return cloudpickle.dumps(tuple(option))
    return bool(option)
