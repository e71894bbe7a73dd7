"""``@remote`` on functions: ``RemoteFunction`` and its options."""

from __future__ import annotations

import functools
import inspect
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import cloudpickle

from ._serialization import dumps_function
from .core.object_ref import ObjectRef
from .util.scheduling_strategies import in_placement_group, strategy_from_options

__all__ = ["TASK_OPTIONS", "ArgumentCheck", "ExportedCode", "RemoteFunction", "check_arguments",
           "check_options", "resources_from_options", "signature_of"]

TASK_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "num_returns", "max_retries", "retry_exceptions",
    "name", "memory", "scheduling_strategy", "max_calls", "runtime_env", "_metadata",
    "accelerator_type", "label_selector", "object_store_memory", "placement_group",
    "placement_group_bundle_index", "placement_group_capture_child_tasks",
    "_generator_backpressure_num_objects", "enable_task_events",
}
# Options that only the decorator takes (Ray's: they are fixed when the code is exported).
DECORATOR_ONLY = {"max_calls", "concurrency_groups"}
_DEFAULTS = {"num_returns": 1, "max_retries": 3, "retry_exceptions": False}
LARGE_ARGUMENT_BYTES = 100 * 2**20  # passed by value above this: suggest put()
EXPORT_WARN_BYTES = 10**7  # Ray's FUNCTION_SIZE_WARN_THRESHOLD
EXPORT_LIMIT_BYTES = 10**8  # Ray's FUNCTION_SIZE_ERROR_THRESHOLD
_SMALL_TYPES = (int, float, bool, type(None), ObjectRef)
_RESOURCE_PRECISION = 0.0001
# keyword -> the types it takes (Ray's checks, with Ray's messages)
_OPTION_TYPES = {
    "max_retries": (int, type(None)), "max_calls": (int, type(None)),
    "max_restarts": (int, type(None)), "max_task_retries": (int, type(None)),
    "num_returns": (int, str, type(None)), "_metadata": (dict, type(None)),
}
_RETRY_COUNTS = {"max_retries", "max_restarts", "max_task_retries"}  # -1: forever


def check_options(options: dict[str, Any], valid: set[str], what: str) -> None:
    """Raise TypeError/ValueError (Ray's wording) for an option that is unknown or bad."""
    unknown = set(options) - valid
    if unknown:
        raise ValueError(f"Invalid option keyword(s) {sorted(unknown)} for {what}. "
                         f"Valid ones are {sorted(valid)}.")
    for key, types in _OPTION_TYPES.items():
        value = options.get(key)
        if key in options and not isinstance(value, types) or isinstance(value, bool):
            raise TypeError(f"The type of keyword '{key}' must be {types}, but received type "
                            f"{type(value)}")
        if key in _RETRY_COUNTS and value is not None and value < -1:
            raise ValueError(f"The keyword '{key}' only accepts None, 0, -1 or a positive "
                             "integer, where -1 represents infinity.")
    if (options.get("max_calls") or 0) < 0:
        raise ValueError("The keyword 'max_calls' only accepts None, 0 or a positive integer")
    num_returns = options.get("num_returns")
    if isinstance(num_returns, str):
        raise ValueError(f"num_returns={num_returns!r} (generator tasks) is not supported: "
                         "return a list with num_returns=N, or put() the items")
    if isinstance(num_returns, int) and num_returns < 0:
        raise ValueError("The keyword 'num_returns' only accepts None, a non-negative integer, "
                         "'streaming' (for generators), or 'dynamic'")
    for key in ("num_cpus", "num_gpus", "memory"):
        value = options.get(key)
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"{key} must be a non-negative number, got {value!r}")
        if key != "memory" and value:
            _check_precision(key, value)
    resources = options.get("resources")
    if resources is not None:
        if not isinstance(resources, dict):
            raise ValueError(f"resources must be a dict, got {type(resources).__name__}")
        if "CPU" in resources or "GPU" in resources:
            raise ValueError("Use the 'num_cpus' and 'num_gpus' keyword instead of 'CPU' and "
                             "'GPU' in 'resources' keyword")
        for name, value in resources.items():
            if isinstance(value, (int, float)) and value:
                _check_precision(name, value)


def _check_precision(name: str, value: float) -> None:
    if abs(round(value, 4) - value) > 1e-9:
        raise ValueError(f"The precision of the fractional quantity of resource {name} "
                         f"cannot go beyond {_RESOURCE_PRECISION}")


def check_options_call(options: dict[str, Any]) -> None:
    """``.options()`` takes every option but those fixed by the decorator."""
    for key in DECORATOR_ONLY:
        if key in options:
            raise ValueError(f"Setting '{key}' is not supported in '.options()'.")


class ArgumentCheck:
    """The signature calls are checked against at ``.remote()``; positional arguments alone
    to a signature of plain parameters (no ``*args``, keyword-only...) are checked by count."""

    __slots__ = ("signature", "fewest", "most")

    def __init__(self, signature: inspect.Signature) -> None:
        self.signature = signature
        params = signature.parameters.values()
        if all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params):
            self.most = len(signature.parameters)
            self.fewest = sum(p.default is p.empty for p in params)
        else:
            self.fewest, self.most = 1, 0  # no count fits: always bind

    def __reduce__(self):
        # Travels as its shape (names, kinds, which have defaults): defaults and annotations
        # need not pickle, and only their presence matters to the check.
        shape = tuple((p.name, int(p.kind), p.default is not p.empty)
                      for p in self.signature.parameters.values())
        return _check_from_shape, (shape,)


def _check_from_shape(shape: tuple) -> ArgumentCheck:
    return ArgumentCheck(inspect.Signature([
        inspect.Parameter(name, inspect._ParameterKind(kind),
                          default=None if has_default else inspect.Parameter.empty)
        for name, kind, has_default in shape]))


def signature_of(fn: Any, *, drop_self: bool = False) -> ArgumentCheck | None:
    """How calls of ``fn`` are checked at ``.remote()`` (None: its signature is not known)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    if drop_self:
        sig = sig.replace(parameters=list(sig.parameters.values())[1:])
    return ArgumentCheck(sig)


def check_arguments(check: ArgumentCheck | None, name: str, args: tuple,
                    kwargs: dict) -> None:
    """TypeError at ``.remote()`` when the arguments do not fit the signature."""
    if check is None or (not kwargs and check.fewest <= len(args) <= check.most):
        return
    try:
        check.signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{name}.remote() got arguments that do not fit its signature "
                        f"{check.signature}: {exc}") from None


def resources_from_options(options: dict[str, Any], default_cpus: float) -> dict[str, float]:
    """Ray's resource options as one resource dict (zero entries dropped)."""
    out = {"CPU": float(options.get("num_cpus", default_cpus) or 0)}
    if options.get("num_gpus"):
        out["GPU"] = float(options["num_gpus"])
    if options.get("memory"):
        out["memory"] = float(int(options["memory"]))  # whole bytes, rounded down as in Ray
    out.update({k: float(v) for k, v in (options.get("resources") or {}).items()})
    return {k: v for k, v in out.items() if v > 0}


def check_export_size(size: int, kind: str, name: str) -> None:
    """Refuse to export code that pickles to more than ``EXPORT_LIMIT_BYTES`` (Ray's limit and
    words); warn above ``EXPORT_WARN_BYTES``. Such code captured a large object by accident."""
    if size <= EXPORT_WARN_BYTES:
        return
    advice = ("Check that its definition is not implicitly capturing a large array or other "
              "object in scope. Tip: use ray.put() to put large objects in the Ray object "
              "store, and pass the ref or get() it inside.")
    if size > EXPORT_LIMIT_BYTES:
        raise ValueError(f"The {kind} {name} is too large ({size // 2**20} MiB > "
                         f"FUNCTION_SIZE_ERROR_THRESHOLD={EXPORT_LIMIT_BYTES // 2**20} MiB). "
                         + advice)
    warnings.warn(f"The {kind} {name} is very large ({size // 2**20} MiB): it is sent to "
                  f"every worker that runs it. {advice}", UserWarning,
                  stacklevel=_user_stacklevel())


class ExportedCode:
    """What remote functions and actor classes share: their code, exported once per runtime.

    ``_registered`` is ``(core worker, function id)`` of the runtime it was exported to; it
    stays behind when the object is pickled (into a task, say), and re-exports after a new
    ``init``.
    """

    _registered: tuple[Any, bytes] | None
    _name: str

    _kind = "remote function"  # how errors name it

    def _function_id(self, core: Any, code: Any) -> bytes:
        if self._registered is None or self._registered[0] is not core:
            blob = dumps_function(code)  # pickled once: checked, then exported
            check_export_size(len(blob), self._kind, self._name)
            self._registered = (core, core.register_function(code, self._name, blob))
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
        self._strategy = strategy_from_options(options)
        self._name = getattr(function, "__name__", "task")
        self._signature = signature_of(function)
        self._decorator = getattr(function, "__ray_invocation_decorator__", None)
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
        check_options_call(options)
        copy = RemoteFunction(self._function, {**self._options, **options})
        copy._registered = self._registered
        copy._warned_large = self._warned_large
        return copy

    def _remote(self, args: tuple | None = None, kwargs: dict | None = None,
                **options: Any) -> ObjectRef | list[ObjectRef] | None:
        """Ray's ``f._remote(args, kwargs, **options)``: ``f.options(**options).remote()``."""
        target = self.options(**options) if options else self
        return target.remote(*(args or ()), **(kwargs or {}))

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submit a call; its ObjectRef (a list for ``num_returns`` > 1, None for 0). A
        function's ``__ray_invocation_decorator__`` wraps the submission, as in Ray: it is
        given ``submit(args, kwargs)`` and returns what ``.remote()`` returns."""
        if self._decorator is not None:
            return self._decorator(self._submit)(args, kwargs)
        return self._submit(args, kwargs)

    def _submit(self, args: tuple, kwargs: dict) -> ObjectRef | list[ObjectRef] | None:
        from .api import _core

        core = _core()
        check_arguments(self._signature, self._name, args, kwargs)
        function_id = self._function_id(core, self._function)
        if (args or kwargs) and not self._warned_large[0]:
            self._warn_if_large(args, kwargs)
        opts = self._options
        num_returns = opts["num_returns"]
        resources, strategy = resources_from_options(opts, 1), self._strategy
        if strategy is not None or core.current_task is not None:  # placement groups
            resources, strategy = in_placement_group(resources, strategy, running_resources(core))
        refs = core.submit_task(
            function_id, self._name, args, kwargs,
            num_returns=num_returns,
            resources=resources,
            max_retries=opts["max_retries"],
            retry_exceptions=_retry_exceptions(opts["retry_exceptions"]),
            task_name=opts.get("name"), strategy=strategy,
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
                UserWarning, stacklevel=_user_stacklevel())
            sys.stderr.flush()  # shown before the long copy starts (a notebook buffers stderr)
            return

    def __repr__(self) -> str:
        return f"RemoteFunction({self._name})"


def running_resources(core: Any) -> dict[str, float] | None:
    """The resources of the task (or actor) running here, whose placement group captures
    the work it submits."""
    spec = core.current_task
    return spec.resources if spec is not None and spec.resources else core.actor_resources


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside the runtime."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


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
