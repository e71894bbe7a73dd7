"""``@remote`` on classes: actor classes, handles and method calls.

An actor is a worker process of its own that holds one instance of a class; its methods run
there, in the order each caller submitted them. A handle holds a reference to the actor's
creation object (handles from ``get_actor`` too: the GCS record names it): when no handle is
left anywhere (and no call is pending), the owner kills a non-detached actor, the way an
unreachable object is freed.
"""

from __future__ import annotations

import functools
import inspect
import threading
import types
from collections.abc import Callable
from typing import Any

from . import _context
from . import _messages as m
from ._ids import random_id
from .core.object_ref import ObjectRef
from .exceptions import ActorExitRequest, PendingCallsLimitExceeded
from .remote_function import (
    ExportedCode,
    check_arguments,
    check_options,
    check_options_call,
    resources_from_options,
    running_resources,
    signature_of,
)
from .util.scheduling_strategies import in_placement_group, strategy_from_options

__all__ = ["ActorClass", "ActorClassInheritanceException", "ActorHandle", "ActorMethod",
           "actor_method", "exit_actor", "method"]

ACTOR_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "memory", "name", "namespace", "get_if_exists",
    "lifetime", "max_concurrency", "max_restarts", "max_task_retries", "scheduling_strategy",
    "max_pending_calls", "concurrency_groups", "runtime_env", "_metadata", "accelerator_type",
    "object_store_memory", "placement_group", "placement_group_bundle_index",
    "placement_group_capture_child_tasks", "label_selector", "enable_task_events",
    "allow_out_of_order_execution", "_labels",
}
METHOD_OPTIONS = {"num_returns", "name", "max_task_retries", "concurrency_group",
                  "retry_exceptions", "enable_task_events"}
# Methods every actor has (Ray's): ready once constructed, a call of any function on the
# instance, and a graceful exit queued behind the calls before it.
BUILTIN_METHODS = ("__ray_ready__", "__ray_call__", "__ray_terminate__")


def method(*, num_returns: int = 1, concurrency_group: str | None = None,
           **_ignored: Any) -> Callable:
    """``@method(num_returns=2)`` on an actor method sets its default number of returns;
    ``concurrency_group="io"`` runs its calls in that group of the actor's
    ``concurrency_groups`` (threads or slots of the group's own)."""

    def mark(fn: Callable) -> Callable:
        fn.__cellfleet_num_returns__ = num_returns
        if concurrency_group is not None:
            fn.__cellfleet_concurrency_group__ = concurrency_group
        return fn

    return mark


def exit_actor() -> None:
    """End the current actor from inside one of its methods: the call fails with
    ActorDiedError, the worker runs its ``atexit`` handlers and exits."""
    core = _context.core
    if core is None or not getattr(core, "actor_id", b""):
        raise TypeError("exit_actor API is called on a non-actor worker.")
    raise ActorExitRequest("exit_actor() was called")


def actor_method(instance: Any, name: str) -> Callable:
    """What a call of ``name`` runs on the actor ``instance`` (on its worker).

    Methods are looked up on the class, so an instance attribute of the same name does not
    hide one; the built-in methods (``__ray_ready__``...) come first.
    """
    if name == "__ray_ready__":
        return lambda: True
    if name == "__ray_call__":
        return lambda fn, *args, **kwargs: fn(instance, *args, **kwargs)
    if name == "__ray_terminate__":
        return exit_actor
    cls = type(instance)
    try:
        static = inspect.getattr_static(cls, name)
    except AttributeError:
        return getattr(instance, name)  # a class that makes its methods in __getattr__
    if isinstance(static, (staticmethod, classmethod)):
        return getattr(cls, name)
    if inspect.isfunction(static):
        return types.MethodType(static, instance)
    return getattr(instance, name)


class ActorClassInheritanceException(TypeError):
    """A class statement named an actor class (the result of ``@remote``) as a base."""


def _core():
    from .api import _core

    return _core()


class ActorClass(ExportedCode):
    """The result of ``@remote`` on a class: ``Cls.remote(*args)`` starts an actor."""

    _kind = "actor"

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        check_options(options, ACTOR_OPTIONS, "an actor class")
        lifetime = options.get("lifetime")
        if lifetime not in (None, "detached", "non_detached"):
            raise ValueError(f"lifetime must be None, 'detached' or 'non_detached', "
                             f"got {lifetime!r}")
        concurrency = options.get("max_concurrency")
        if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
            raise ValueError(f"max_concurrency must be an int >= 1, got {concurrency!r}")
        for key in ("name", "namespace"):
            if options.get(key) is not None and not isinstance(options[key], str):
                raise TypeError(f"The actor {key} must be a string, got "
                                f"{type(options[key]).__name__}")
        if options.get("name") == "":
            raise ValueError("Actor name cannot be an empty string: leave name out for an "
                             "unnamed actor.")
        if options.get("namespace") == "":
            raise ValueError("Actor namespace cannot be an empty string: leave namespace out "
                             "for the job's namespace.")
        if options.get("get_if_exists") and not options.get("name"):
            raise ValueError("The actor name must be specified to use `get_if_exists`.")
        pending = options.get("max_pending_calls", -1)
        if not isinstance(pending, int) or isinstance(pending, bool) or pending == 0 \
                or pending < -1:
            raise ValueError(f"max_pending_calls must be -1 (no limit) or a positive int, "
                             f"got {pending!r}")
        groups = options.get("concurrency_groups")
        if groups is not None and (not isinstance(groups, dict) or not all(
                isinstance(n, int) and n >= 1 for n in groups.values())):
            raise ValueError("concurrency_groups must map group names to ints >= 1, "
                             f"got {groups!r}")
        self._cls = cls
        self._options = options
        self._name = cls.__name__
        self._registered: tuple[Any, bytes] | None = None
        members = [(name, fn) for name, fn in inspect.getmembers(cls, callable)
                   if not name.startswith("__") or name == "__call__"]
        self._methods = {name: getattr(fn, "__cellfleet_num_returns__", 1)
                         for name, fn in members}
        self._method_groups = {
            name: fn.__cellfleet_concurrency_group__ for name, fn in members
            if getattr(fn, "__cellfleet_concurrency_group__", None) is not None}
        self._signatures = {
            name: signature_of(fn, drop_self=inspect.isfunction(
                inspect.getattr_static(cls, name)))
            for name, fn in members
        }
        self._init_signature = signature_of(cls)
        self._is_async = any(
            inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
            for _, fn in inspect.getmembers(cls, callable)
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Actors cannot be instantiated directly. Instead of "
                        f"'{self._name}()', use '{self._name}.remote()'.")

    def __getattr__(self, name: str) -> Any:
        # The class's own attributes, class methods and static methods, as on Ray's. Never
        # the class's own function objects: cloudpickle would find them through the module
        # (``module.Counter.inc``) and pickle the class's methods by reference, which
        # workers that cannot import the module fail to load.
        cls = self.__dict__.get("_cls")
        if cls is None or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)
        static = inspect.getattr_static(cls, name)
        if inspect.isfunction(static):
            raise AttributeError(
                f"'{self._name}.{name}' is an actor method: call it on a handle, "
                f"{self._name}.remote().{name}.remote(...)")
        value = getattr(cls, name)
        return functools.partial(value) if isinstance(static, staticmethod) else value

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._cls)) | {"options", "remote"})

    def __mro_entries__(self, bases: tuple) -> tuple:
        raise ActorClassInheritanceException(
            f"Inheriting from actor classes is not currently supported. Derive from the "
            f"plain class instead, and decorate the subclass: keep '{self._name}' undecorated "
            f"and use remote({self._name}) where its actors are made.")

    def options(self, **options: Any) -> ActorClass:
        """A copy with these options changed (``name``, ``num_cpus``, ``lifetime``...)."""
        check_options_call(options)
        copy = ActorClass(self._cls, {**self._options, **options})
        copy._registered = self._registered
        return copy

    def _remote(self, args: tuple | None = None, kwargs: dict | None = None,
                **options: Any) -> ActorHandle:
        """Ray's ``Cls._remote(args, kwargs, **options)``: ``Cls.options(**options).remote()``."""
        target = self.options(**options) if options else self
        return target.remote(*(args or ()), **(kwargs or {}))

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        groups = self._options.get("concurrency_groups") or {}
        for name, group in self._method_groups.items():
            if group not in groups:
                raise ValueError(
                    f"{self._name}.{name} is in concurrency group {group!r}, which the actor "
                    f"does not define: give it concurrency_groups={{{group!r}: N, ...}}")
        core = _core()
        check_arguments(self._init_signature, self._name, args, kwargs)
        function_id = self._function_id(core, self._cls)
        opts = self._options
        strategy = strategy_from_options(opts)
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
            "max_pending_calls": opts.get("max_pending_calls", -1),
        }
        existing = core.request(
            "gcs", m.RegisterActor(actor_id, info, bool(opts.get("get_if_exists"))))
        if existing is not None:
            return ActorHandle._from_record(existing)
        # Ray's defaults: an actor takes 1 CPU to be placed and none to run, unless told.
        run = resources_from_options(opts, 0)
        place = run if "num_cpus" in opts else {**run, "CPU": run.get("CPU", 0) + 1}
        if strategy is not None or core.current_task is not None:  # in a placement group
            current = running_resources(core)
            place, strategy = in_placement_group(place, strategy, current)
            run, _ = in_placement_group(run, strategy, current)
        refs = core.submit_task(
            function_id, self._name, args, kwargs, num_returns=1, resources=place,
            max_retries=0, retry_exceptions=False, task_name=f"{self._name}.__init__",
            actor_id=actor_id,
            actor_options={"max_concurrency": max_concurrency, "is_async": self._is_async,
                           "detached": detached, "run_resources": run,
                           "max_restarts": opts.get("max_restarts", 0),
                           "max_task_retries": opts.get("max_task_retries", 0),
                           "concurrency_groups": groups, "method_groups": self._method_groups},
            strategy=strategy,
        )
        # Handles looked up by name hold the creation object too (see ActorHandle._from_record):
        # the GCS learns its id without a round trip (the update follows the registration on
        # the same connection).
        update = m.UpdateActor(actor_id, "", {"creation_object_id": refs[0]._id})
        core.call_soon(lambda: core.gcs.send(update))
        return ActorHandle(actor_id, self._name, self._methods, refs[0], self._signatures,
                           opts.get("max_pending_calls", -1))

    def __repr__(self) -> str:
        return f"ActorClass({self._name})"


class ActorHandle:
    """A handle to an actor; ``handle.method.remote(...)`` calls it. Handles pickle."""

    def __init__(self, actor_id: bytes, class_name: str, methods: dict[str, int],
                 creation_ref: ObjectRef | None, signatures: dict[str, Any] | None = None,
                 max_pending_calls: int = -1) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._creation_ref = creation_ref
        self._signatures = signatures or {}  # known where the class was decorated
        self._pending = _PendingCalls(max_pending_calls) if max_pending_calls > 0 else None

    @classmethod
    def _from_record(cls, record: dict, keep_alive: bool = True) -> ActorHandle:
        """A handle to the actor of a GCS record. With ``keep_alive`` it holds a reference to
        the actor's creation object, as every handle does in Ray: the actor lives while any
        handle does (the owner counts this process as a borrower)."""
        creation = record.get("creation_object_id")
        ref = None
        if keep_alive and creation and not record.get("detached"):
            ref = ObjectRef(creation, record["owner"])
        return cls(record["actor_id"], record["class_name"], record["methods"], ref,
                   max_pending_calls=record.get("max_pending_calls", -1))

    def __getattr__(self, name: str) -> ActorMethod:
        methods = self.__dict__.get("_methods", {})
        if name in BUILTIN_METHODS:
            return ActorMethod(self, name, {"num_returns": 1})
        if name not in methods:
            raise AttributeError(f"'{self.__dict__.get('_class_name', 'Actor')}' actor has no "
                                 f"method '{name}'")
        return ActorMethod(self, name, {"num_returns": methods[name]})

    def __dir__(self) -> list[str]:
        return sorted({*self._methods, *BUILTIN_METHODS, "__init__"})

    def __reduce__(self):
        limit = self._pending.limit if self._pending is not None else -1
        return ActorHandle, (self._actor_id, self._class_name, self._methods,
                             self._creation_ref, self._signatures, limit)

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id.hex()})"

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id


class _PendingCalls:
    """The calls a handle has in flight, held to its actor's ``max_pending_calls``."""

    __slots__ = ("limit", "count", "_lock")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self._lock = threading.Lock()

    def take(self, handle: ActorHandle, method: str) -> None:
        with self._lock:
            if self.count >= self.limit:
                raise PendingCallsLimitExceeded(
                    f"The task {handle._class_name}.{method} could not be submitted to "
                    f"{handle!r} because more than {self.limit} tasks are queued on the actor. "
                    "This limit can be adjusted with the `max_pending_calls` actor option.")
            self.count += 1

    def done(self, _result: Any) -> None:
        with self._lock:
            self.count -= 1


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
        check_arguments(handle._signatures.get(self._name), f"{handle._class_name}.{self._name}",
                        args, kwargs)
        ref = handle._creation_ref
        pending = handle._pending
        if pending is not None:
            pending.take(handle, self._name)
        try:
            refs = _core().submit_task(
                b"", f"{handle._class_name}.{self._name}", args, kwargs,
                num_returns=num_returns, resources={}, max_retries=0, retry_exceptions=False,
                task_name=self._options.get("name"), actor_id=handle._actor_id,
                method=self._name, holds=[ref._id] if ref is not None else [],
            )
        except BaseException:
            if pending is not None:
                pending.done(None)
            raise
        if pending is not None:
            if refs:
                refs[0]._on_completed(pending.done)
            else:
                pending.done(None)
        if num_returns == 1:
            return refs[0]
        return refs if num_returns else None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Actor methods cannot be called directly. Instead of running "
                        f"'{self._name}()', try '{self._name}.remote()'.")

    def _remote(self, args: tuple | None = None, kwargs: dict | None = None,
                **options: Any) -> ObjectRef | list[ObjectRef] | None:
        """Ray's ``handle.method._remote(args, kwargs, **options)``."""
        target = self.options(**options) if options else self
        return target.remote(*(args or ()), **(kwargs or {}))
