"""cellfleet: a distributed runtime in Ray's architecture, for Jupyter.

``import cellfleet as ray`` gives Ray's core API: ``init``, ``remote`` (tasks and actors),
``get``, ``wait``, ``put``, ``cancel``, ``kill``, ``get_actor``, ``shutdown``, ``ObjectRef``,
``get_runtime_context``, ``nodes``, the resource queries and ``exceptions``.

The names load on first use, so the runtime's own processes (the GCS, raylets) start without
importing the driver API they do not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import exceptions
    from .actor import ActorClass, ActorHandle, method
    from .api import (
        available_resources,
        cancel,
        cluster_resources,
        get,
        get_actor,
        get_gpu_ids,
        init,
        is_initialized,
        kill,
        nodes,
        put,
        shutdown,
        wait,
    )
    from .core.object_ref import ObjectID, ObjectRef
    from .runtime_context import get_runtime_context

__all__ = [
    "ActorClass",
    "ActorHandle",
    "ObjectID",
    "ObjectRef",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "wait",
]

__version__ = "0.1.0"

# Where each public name lives (a module name alone: the name is that module).
_HOMES = {
    "ActorClass": "actor", "ActorHandle": "actor", "method": "actor",
    "ObjectRef": "core.object_ref", "ObjectID": "core.object_ref", "exceptions": "exceptions",
    "get_runtime_context": "runtime_context",
    **{name: "api" for name in (
        "available_resources", "cancel", "cluster_resources", "get", "get_actor",
        "get_gpu_ids", "init", "is_initialized", "kill", "nodes", "put", "shutdown", "wait",
    )},
}


# Modules reachable as attributes of the package, as Ray's are (``ray.util.ActorPool``).
_SUBMODULES = {"actor", "job_config", "remote_function", "runtime_context", "util"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None and name in _SUBMODULES:
        home = name
    if home is None:
        raise AttributeError(f"module 'cellfleet' has no attribute {name!r}")
    module = importlib.import_module(f".{home}", __name__)
    value = module if home == name else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def remote(*args: Any, **options: Any) -> Any:
    """``@remote`` or ``@remote(num_cpus=..., num_returns=...)`` on a function or a class."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args or not options:
        raise TypeError("The @remote decorator must be applied either with no arguments and "
                        "no parentheses, or with keyword arguments only, e.g. "
                        "@remote(num_cpus=2).")
    return lambda target: _make_remote(target, options)


def _make_remote(target: Any, options: dict[str, Any]) -> Any:
    from .actor import ActorClass
    from .remote_function import RemoteFunction

    if isinstance(target, type):
        return ActorClass(target, options)
    if not callable(target):
        raise TypeError(f"@remote applies to functions and classes, not {type(target).__name__}")
    return RemoteFunction(target, options)
