"""What a task is on the wire: its spec (owner to worker) and its result (worker to owner)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ArgSlot", "TaskResult", "TaskSpec"]

# An object payload: ["i", [kind, pickle, buffers]] inline, or
# ["s", kind, size, node_id, raylet_address, owner] in a node's shared-memory arena, found by
# id (as its owner hands it out: then the raylets of other copies, ``core.object_directory``).
Payload = list


class ArgSlot:
    """Stands in a pickled argument list for a top-level ObjectRef resolved by the owner."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self):
        return ArgSlot, (self.index,)


@dataclass(slots=True)
class TaskSpec:
    """Everything a worker needs to run a task, and its owner to retry it."""

    task_id: bytes
    job_id: int
    function_id: bytes
    name: str
    args: bytes  # pickled (args, kwargs) with ArgSlot for top-level refs; b"" for none
    arg_refs: list  # [[object_id, owner_address], ...] for the ArgSlots, in order
    num_returns: int
    owner: str
    parent_task_id: bytes
    tag: str
    resources: dict
    max_retries: int
    retry_exceptions: bool | bytes  # bytes: pickled tuple of the exception types to retry
    attempt: int = 0
    resolved: list = field(default_factory=list)  # a Payload per arg_refs entry, at push time
    actor_id: bytes = b""  # set for actor creation (method "") and actor method tasks
    method: str = ""
    actor_options: dict | None = None  # creation only: max_concurrency, is_async
    namespace: str = ""
    strategy: list | None = None  # the owner's scheduling_strategy (not sent to workers)

    @property
    def kind(self) -> str:
        if not self.actor_id:
            return "NORMAL_TASK"
        return "ACTOR_TASK" if self.method else "ACTOR_CREATION_TASK"

    def to_wire(self) -> list:
        return [self.task_id, self.job_id, self.function_id, self.name, self.args,
                self.arg_refs, self.num_returns, self.owner, self.parent_task_id, self.tag,
                self.resources, self.max_retries, self.retry_exceptions, self.attempt,
                self.resolved, self.actor_id, self.method, self.actor_options, self.namespace]

    @classmethod
    def from_wire(cls, items: list) -> TaskSpec:
        return cls(*items)


@dataclass(slots=True)
class TaskResult:
    """The outcome of one attempt of a task."""

    task_id: bytes
    ok: bool  # False: the returns hold the error
    returns: list  # a Payload per return value
    contained: list  # per return: [[object_id, owner_address], ...] refs inside it
    worker_id: bytes
    node_id: bytes
    pid: int
    start: float
    end: float
    retryable: bool = False  # an application error that retry_exceptions allows retrying
    error_text: str = ""
    lost_argument: bytes = b""  # the task did not run: every copy of this argument was lost

    def to_wire(self) -> list:
        return [self.task_id, self.ok, self.returns, self.contained, self.worker_id,
                self.node_id, self.pid, self.start, self.end, self.retryable, self.error_text,
                self.lost_argument]

    @classmethod
    def from_wire(cls, items: list) -> TaskResult:
        return cls(*items)


def scheduling_key(resources: dict[str, Any]) -> tuple:
    return tuple(sorted(resources.items()))
