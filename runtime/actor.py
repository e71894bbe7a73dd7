"""``@remote`` on classes: actor classes, handles and method calls.

An actor is a worker process of its own that holds one instance of a class; its methods run
there, in the order each caller submitted them. A handle holds a reference to the actor's
creation object: when no handle is left anywhere (and no call is pending), the owner kills a
non-detached actor, the way an unreachable object is freed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from . import _messages as m
from ._ids import random_id
from .core.object_ref import ObjectRef
from .remote_function import ExportedCode, check_options, resources_from_options

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "method"]

ACTOR_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "memory", "name", "namespace", "get_if_exists",
    "lifetime", "max_concurrency", "max_restarts", "max_task_retries", "scheduling_strategy",
    "max_pending_calls",
}
METHOD_OPTIONS = {"num_returns", "name", "max_task_retries"}


def method(*, num_returns: int = 1) -> Callable:
    """``@method(num_returns=2)`` on an actor method sets its default number of returns."""

    def mark(fn: Callable) -> Callable:
        fn.__cellfleet_num_returns__ = num_returns
        return fn

    return mark


def _core():
    from .api import _core

    return _core()


class ActorClass(ExportedCode):
    """The result of ``@remote`` on a class: ``Cls.remote(*args)`` starts an actor."""

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        check_options(options, ACTOR_OPTIONS, "an actor class")
        lifetime = options.get("lifetime")
        if lifetime not in (None, "detached", "non_detached"):
            raise ValueError(f"lifetime must be None, 'detached' or 'non_detached', "
                             f"got {lifetime!r}")
        concurrency = options.get("max_concurrency")
        if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
            raise ValueError(f"max_concurrency must be an int >= 1, got {concurrency!r}")
        self._cls = cls
        self._options = options
        self._name = cls.__qualname__
        self._registered: tuple[Any, bytes] | None = None
        self._methods = {
            name: getattr(fn, "__cellfleet_num_returns__", 1)
            for name, fn in inspect.getmembers(cls, callable)
            if not name.startswith("__") or name == "__call__"
        }
        self._is_async = any(
            inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
            for _, fn in inspect.getmembers(cls, callable)
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Actors cannot be instantiated directly. Instead of "
                        f"'{self._name}()', use '{self._name}.remote()'.")

    def options(self, **options: Any) -> ActorClass:
        """A copy with these options changed (``name``, ``num_cpus``, ``lifetime``...)."""
        copy = ActorClass(self._cls, {**self._options, **options})
        copy._registered = self._registered
        return copy

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        core = _core()
        function_id = self._function_id(core, self._cls)
        opts = self._options
        detached = opts.get("lifetime") == "detached"
        namespace = opts.get("namespace")
        namespace = core.namespace if namespace is None else namespace
        actor_id = random_id()
        max_concurrency = opts.get("max_concurrency") or (1000 if self._is_async else 1)
        info = {
            "name": opts.get("name") or "", "namespace": namespace,
            "class_name": self._name, "owner": core.address, "detached": detached,
            "max_restarts": opts.get("max_restarts", 0),
            "max_task_retries": opts.get("max_task_retries", 0),
            "max_concurrency": max_concurrency, "methods": self._methods,
            "is_async": self._is_async, "job_id": core.current_job_id,
        }
        existing = core.request(
            "gcs", m.RegisterActor(actor_id, info, bool(opts.get("get_if_exists"))))
        if existing is not None:
            return ActorHandle._from_record(existing)
        # Ray's defaults: an actor takes 1 CPU to be placed and none to run, unless told.
        run = resources_from_options(opts, 0)
        place = run if "num_cpus" in opts else {**run, "CPU": run.get("CPU", 0) + 1}
        refs = core.submit_task(
            function_id, self._name, args, kwargs, num_returns=1, resources=place,
            max_retries=0, retry_exceptions=False, task_name=f"{self._name}.__init__",
            actor_id=actor_id,
            actor_options={"max_concurrency": max_concurrency, "is_async": self._is_async,
                           "detached": detached, "run_resources": run},
        )
        return ActorHandle(actor_id, self._name, self._methods, refs[0])

    def __repr__(self) -> str:
        return f"ActorClass({self._name})"


class ActorHandle:
    """A handle to an actor; ``handle.method.remote(...)`` calls it. Handles pickle."""

    def __init__(self, actor_id: bytes, class_name: str, methods: dict[str, int],
                 creation_ref: ObjectRef | None) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._creation_ref = creation_ref

    @classmethod
    def _from_record(cls, record: dict) -> ActorHandle:
        return cls(record["actor_id"], record["class_name"], record["methods"], None)

    def __getattr__(self, name: str) -> ActorMethod:
        methods = self.__dict__.get("_methods", {})
        if name not in methods:
            raise AttributeError(f"'{self.__dict__.get('_class_name', 'Actor')}' actor has no "
                                 f"method '{name}'")
        return ActorMethod(self, name, {"num_returns": methods[name]})

    def __reduce__(self):
        return ActorHandle, (self._actor_id, self._class_name, self._methods,
                             self._creation_ref)

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id.hex()})"

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id


class ActorMethod:
    """``handle.method``: ``.remote(...)`` submits a call, ``.options(...)`` changes it."""

    def __init__(self, handle: ActorHandle, name: str, options: dict[str, Any]) -> None:
        self._handle = handle
        self._name = name
        self._options = options

    def options(self, **options: Any) -> ActorMethod:
        check_options(options, METHOD_OPTIONS, "an actor method")
        return ActorMethod(self._handle, self._name, {**self._options, **options})

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef | list[ObjectRef] | None:
        handle = self._handle
        num_returns = self._options.get("num_returns", 1)
        ref = handle._creation_ref
        refs = _core().submit_task(
            b"", f"{handle._class_name}.{self._name}", args, kwargs,
            num_returns=num_returns, resources={}, max_retries=0, retry_exceptions=False,
            task_name=self._options.get("name"), actor_id=handle._actor_id,
            method=self._name, holds=[ref._id] if ref is not None else [],
        )
        if num_returns == 1:
            return refs[0]
        return refs if num_returns else None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Actor methods cannot be called directly. Instead of running "
                        f"'{self._name}()', try '{self._name}.remote()'.")
