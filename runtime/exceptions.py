"""Exceptions raised by cellfleet, named and arranged as in Ray 2.x ``ray.exceptions``.

Hierarchy::

    Exception
    └── RayError
        ├── RayTaskError                      and its RayTaskError(<cause type>) subclasses
        ├── RayActorError
        │   ├── ActorDiedError
        │   └── ActorUnavailableError
        ├── ActorUnschedulableError
        ├── TaskUnschedulableError
        ├── TaskCancelledError
        ├── TaskPlacementGroupRemoved
        ├── ActorPlacementGroupRemoved
        ├── PendingCallsLimitExceeded
        ├── WorkerCrashedError
        ├── LocalRayletDiedError
        ├── NodeDiedError
        ├── GetTimeoutError                   also a TimeoutError
        ├── ObjectLostError
        │   ├── ObjectFetchTimedOutError
        │   ├── ReferenceCountingAssertionError   also an AssertionError
        │   ├── OwnerDiedError
        │   └── ObjectReconstructionFailedError
        │       ├── ObjectReconstructionFailedMaxAttemptsExceededError
        │       └── ObjectReconstructionFailedLineageEvictedError
        ├── ObjectStoreFullError
        ├── OutOfDiskError
        ├── OutOfMemoryError
        ├── RaySystemError
        ├── CrossLanguageError
        ├── RuntimeEnvSetupError
        ├── AsyncioActorExit
        ├── AuthenticationError               cellfleet: a peer failed the token handshake
        └── ProtocolError                     cellfleet: a malformed frame or message
    SystemExit
    └── ActorExitRequest                      raised by exit_actor() inside an actor

Every exception survives a pickle round trip with its fields. Those that take nothing but a
message (ProtocolError, ObjectStoreFullError, TaskUnschedulableError, ...) print it unchanged,
so ``type(e)(str(e))`` rebuilds an equal exception on the far side of an RPC.
"""

from __future__ import annotations

import enum
import threading
from typing import Any

__all__ = [
    "ActorDeathReason",
    "ActorDiedError",
    "ActorExitRequest",
    "ActorPlacementGroupRemoved",
    "ActorUnavailableError",
    "ActorUnschedulableError",
    "AsyncioActorExit",
    "AuthenticationError",
    "CrossLanguageError",
    "GetTimeoutError",
    "LocalRayletDiedError",
    "NodeDiedError",
    "ObjectFetchTimedOutError",
    "ObjectLostError",
    "ObjectReconstructionFailedError",
    "ObjectReconstructionFailedLineageEvictedError",
    "ObjectReconstructionFailedMaxAttemptsExceededError",
    "ObjectStoreFullError",
    "OutOfDiskError",
    "OutOfMemoryError",
    "OwnerDiedError",
    "PendingCallsLimitExceeded",
    "ProtocolError",
    "RayActorError",
    "RayError",
    "RaySystemError",
    "RayTaskError",
    "ReferenceCountingAssertionError",
    "RuntimeEnvSetupError",
    "TaskCancelledError",
    "TaskPlacementGroupRemoved",
    "TaskUnschedulableError",
    "WorkerCrashedError",
]


class RayError(Exception):
    """Base class of every exception cellfleet raises."""


# --- task errors ---------------------------------------------------------------------------


class RayTaskError(RayError):
    """A task or actor method raised; ``cause`` is the exception it raised.

    ``ray.get`` raises ``as_instanceof_cause()``, which is also an instance of the cause's
    type, so ``except ValueError`` catches a remote ``ValueError``.
    """

    def __init__(
        self,
        function_name: str,
        traceback_str: str,
        cause: BaseException,
        pid: int | None = None,
        ip: str | None = None,
    ) -> None:
        # Not super().__init__: in a RayTaskError(<cause type>) class the next __init__ in
        # the MRO may be the cause type's, which takes arguments of its own.
        Exception.__init__(self, function_name, traceback_str, cause, pid, ip)
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.ip = ip

    def __str__(self) -> str:
        where = ", ".join(
            f"{name}={value}"
            for name, value in (("pid", self.pid), ("ip", self.ip))
            if value is not None
        )
        header = f"ray::{self.function_name}()" + (f" ({where})" if where else "")
        return f"{header}\n{self.traceback_str.rstrip()}"

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.function_name, self.traceback_str, self.cause, self.pid, self.ip)

    def as_instanceof_cause(self) -> RayTaskError:
        """This error as an instance of ``RayTaskError(<cause type>)``, or itself if impossible.

        Causes that are not ``Exception`` subclasses (``KeyboardInterrupt``, ``SystemExit``)
        are never mixed in: a remote exit must not look like a local one.
        """
        cause = self.cause
        while isinstance(cause, RayTaskError):  # raised on through a task that called get()
            cause = cause.cause
        cause_type = type(cause)
        if isinstance(self, cause_type) or not issubclass(cause_type, Exception):
            return self
        dual = _dual_class(cause_type)
        if dual is None:
            return self
        try:
            error = dual(self.function_name, self.traceback_str, self.cause, self.pid, self.ip)
        except Exception:  # noqa: BLE001 - the cause type's own __new__ may raise anything
            return self
        error.args = cause.args
        return error


class _CauseTypedTaskError(RayTaskError):
    """Base of the ``RayTaskError(<cause type>)`` classes made by ``as_instanceof_cause``."""

    def __getattr__(self, name: str) -> Any:
        # Attributes the cause's __init__ set (errno, a user exception's fields) live on the
        # cause: the dual instance never ran that __init__.
        try:
            cause = self.__dict__["cause"]
        except KeyError:
            raise AttributeError(name) from None
        return getattr(cause, name)

    def __reduce__(self) -> tuple[Any, ...]:
        plain = RayTaskError(self.function_name, self.traceback_str, self.cause, self.pid, self.ip)
        return _restore_as_instanceof_cause, (plain,)


def _restore_as_instanceof_cause(error: RayTaskError) -> RayTaskError:
    """Unpickle a ``RayTaskError(<cause type>)``: its class is made at run time, not imported."""
    return error.as_instanceof_cause()


_dual_classes: dict[type[Exception], type[RayTaskError] | None] = {}
_dual_classes_lock = threading.Lock()


def _dual_class(cause_type: type[Exception]) -> type[RayTaskError] | None:
    """The cached ``RayTaskError(<cause type>)`` class, or None if the type can't be subclassed."""
    with _dual_classes_lock:
        if cause_type not in _dual_classes:
            name = f"RayTaskError({cause_type.__name__})"
            namespace = {"__module__": __name__, "__qualname__": name}
            # A layout or MRO conflict raises TypeError; the type's __init_subclass__ anything.
            try:
                dual = type(name, (_CauseTypedTaskError, cause_type), namespace)
            except Exception:  # noqa: BLE001
                dual = None
            _dual_classes[cause_type] = dual
        return _dual_classes[cause_type]


class TaskCancelledError(RayError):
    """The task was cancelled with ``cancel()``."""

    def __init__(self, task_id: str | None = None, error_message: str | None = None) -> None:
        self.task_id = task_id
        self.error_message = error_message
        message = f"Task: {task_id} was cancelled. " if task_id else ""
        super().__init__((message + (error_message or "")).strip() or "The task was cancelled.")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.task_id, self.error_message)


class TaskUnschedulableError(RayError):
    """The task can never be scheduled, e.g. its node affinity names a dead node."""

    def __init__(self, error_message: str) -> None:
        super().__init__(error_message)
        self.error_message = error_message


class TaskPlacementGroupRemoved(RayError):
    """The placement group the task was scheduled into has been removed."""

    def __str__(self) -> str:
        return "The placement group corresponding to this task has been removed."


class WorkerCrashedError(RayError):
    """The worker process died while it was executing the task."""

    def __init__(self, error_message: str | None = None) -> None:
        self.error_message = error_message
        message = "The worker died unexpectedly while executing this task."
        super().__init__(f"{message} {error_message}" if error_message else message)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.error_message,)


class LocalRayletDiedError(RayError):
    """The raylet of the task's node died."""

    def __str__(self) -> str:
        return "The task's local raylet died. Check the raylet's log for more information."


class NodeDiedError(RayError):
    """The node the task or object lived on died."""


class GetTimeoutError(RayError, TimeoutError):
    """``get`` or ``wait`` gave up after its timeout."""


class PendingCallsLimitExceeded(RayError):
    """An actor handle has more pending calls than its ``max_pending_calls``."""


class RuntimeEnvSetupError(RayError):
    """The task's or actor's runtime environment could not be set up."""

    def __init__(self, error_message: str | None = None) -> None:
        self.error_message = error_message
        message = "Failed to set up runtime environment."
        super().__init__(f"{message}\n{error_message}" if error_message else message)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.error_message,)


class CrossLanguageError(RayError):
    """An exception raised by a task written in another language."""


class RaySystemError(RayError):
    """cellfleet itself failed; ``client_exc`` is what went wrong."""

    def __init__(self, client_exc: object, traceback_str: str | None = None) -> None:
        self.client_exc = client_exc
        self.traceback_str = traceback_str
        message = f"System error: {client_exc}"
        super().__init__(f"{message}\ntraceback: {traceback_str}" if traceback_str else message)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.client_exc, self.traceback_str)


# --- actor errors --------------------------------------------------------------------------


class RayActorError(RayError):
    """The actor can't run the method: it died, or can't be reached."""

    def __init__(self, actor_id: str | None = None, error_msg: str | None = None) -> None:
        self.actor_id = actor_id
        self.error_msg = error_msg or "The actor died unexpectedly before finishing this task."
        super().__init__(self.error_msg)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.actor_id, self.error_msg)


class ActorDeathReason(str, enum.Enum):
    """Why an actor died, as ``ActorDiedError.reason`` reports it; prints as its value."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    KILLED = "killed"
    CREATION_TASK_ERROR = "creation_task_error"
    PROCESS_DIED = "process_died"
    NODE_DIED = "node_died"
    OUT_OF_SCOPE = "out_of_scope"
    INTENDED_EXIT = "intended_exit"


_ACTOR_DEATH_MESSAGES = {
    None: "The actor died unexpectedly before finishing this task.",
    ActorDeathReason.KILLED: "The actor is dead because it was killed by `kill()`.",
    ActorDeathReason.CREATION_TASK_ERROR: (
        "The actor died because of an error raised in its creation task (its __init__)."
    ),
    ActorDeathReason.PROCESS_DIED: (
        "The actor died because its worker process exited unexpectedly."
    ),
    ActorDeathReason.NODE_DIED: "The actor died because its node died.",
    ActorDeathReason.OUT_OF_SCOPE: (
        "The actor is dead because all references to it went out of scope."
    ),
    ActorDeathReason.INTENDED_EXIT: (
        "The actor exited on purpose: its code called exit_actor() (or __ray_terminate__ "
        "ran)."
    ),
}


class ActorDiedError(RayActorError):
    """The actor is dead; ``reason`` says why and ``detail`` adds what is known."""

    def __init__(
        self,
        actor_id: str | None = None,
        reason: ActorDeathReason | str | None = None,
        detail: str | None = None,
    ) -> None:
        self.reason = None if reason is None else ActorDeathReason(reason)
        self.detail = detail
        message = _ACTOR_DEATH_MESSAGES[self.reason]
        if actor_id:
            message += f"\n\tactor_id: {actor_id}"
        if detail:
            message += f"\n{detail}"
        super().__init__(actor_id, message)

    def __reduce__(self) -> tuple[Any, ...]:
        reason = None if self.reason is None else self.reason.value
        return type(self), (self.actor_id, reason, self.detail)


class ActorExitRequest(SystemExit):
    """Raised by ``actor.exit_actor()`` inside an actor: the call fails with ActorDiedError
    and the actor's worker exits (running its ``atexit`` handlers)."""


class ActorUnavailableError(RayActorError):
    """The actor is alive but can't be reached now; the call may or may not have run."""

    def __init__(self, error_message: str, actor_id: str | None = None) -> None:
        self.error_message = error_message
        actor = f"The actor {actor_id}" if actor_id else "The actor"
        super().__init__(
            actor_id,
            f"{actor} is unavailable: {error_message}. "
            "The task may or may not have been executed on the actor.",
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.error_message, self.actor_id)


class ActorUnschedulableError(RayError):
    """The actor can never be scheduled, e.g. its node affinity names a dead node."""

    def __init__(self, error_message: str) -> None:
        super().__init__(error_message)
        self.error_message = error_message


class ActorPlacementGroupRemoved(RayError):
    """The placement group the actor was scheduled into has been removed."""

    def __str__(self) -> str:
        return "The placement group corresponding to this Actor has been removed."


class AsyncioActorExit(RayError):
    """An asyncio actor exits on purpose via ``exit_actor()``."""


# --- object errors -------------------------------------------------------------------------


class ObjectLostError(RayError):
    """The object's value can't be retrieved: every copy of it is gone."""

    _detail = "All copies of the object have been lost due to node failure."

    def __init__(self, object_ref_hex: str, owner_address: str = "", call_site: str = "") -> None:
        self.object_ref_hex = object_ref_hex
        self.owner_address = owner_address
        self.call_site = call_site
        message = f"Failed to retrieve object {object_ref_hex}. {self._detail}"
        if owner_address:
            message += f" Owner address: {owner_address}."
        if call_site:
            message += f"\nThe ObjectRef was created at: {call_site}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.object_ref_hex, self.owner_address, self.call_site)


class ObjectFetchTimedOutError(ObjectLostError):
    """No copy of the object could be located within the fetch timeout."""

    _detail = (
        "Fetch for the object timed out because no locations were found for it. "
        "This may indicate a system-level bug."
    )


class ReferenceCountingAssertionError(ObjectLostError, AssertionError):
    """The object was deleted by reference counting while still referenced: a bug."""

    _detail = (
        "The object has already been deleted by the reference counting protocol. "
        "This should not happen."
    )


class OwnerDiedError(ObjectLostError):
    """The worker that owns the object (called ``.remote()`` or ``put()``) exited."""

    _detail = (
        "The object's owner has exited. This is the worker that first created the ObjectRef "
        "via `.remote()` or `put()`."
    )


class ObjectReconstructionFailedError(ObjectLostError):
    """The object was lost and can't be rebuilt by re-running the task that made it."""

    _detail = (
        "The object cannot be reconstructed because it was created by an actor, a `put()` "
        "call, or its ObjectRef was created by a different worker."
    )


class ObjectReconstructionFailedMaxAttemptsExceededError(ObjectReconstructionFailedError):
    """Reconstructing the object would exceed its task's ``max_retries``."""

    _detail = (
        "The object cannot be reconstructed because the maximum number of task retries has "
        "been exceeded. Raise the task's `max_retries` to prevent this error."
    )


class ObjectReconstructionFailedLineageEvictedError(ObjectReconstructionFailedError):
    """The lineage needed to rebuild the object was evicted to save memory."""

    _detail = (
        "The object cannot be reconstructed because its lineage has been evicted to reduce "
        "memory pressure."
    )


class ObjectStoreFullError(RayError):
    """The object store has no room for a new object."""


class OutOfDiskError(RayError):
    """The node's disk is too full to spill or store objects."""


class OutOfMemoryError(RayError):
    """The task was killed because its node ran out of memory."""


# --- cellfleet transport errors ------------------------------------------------------------

_AUTHENTICATION_HINT = "Check that the cluster token is right for this address."


class AuthenticationError(RayError):
    """A peer failed the cluster-token handshake, or isn't a cellfleet process at all."""

    def __init__(self, message: str = "Authentication with the peer failed.") -> None:
        if _AUTHENTICATION_HINT not in message:
            separator = " " if message.endswith((".", "?", "!")) else ". "
            message = f"{message}{separator}{_AUTHENTICATION_HINT}"
        super().__init__(message)


class ProtocolError(RayError):
    """A peer sent a malformed frame or message."""
