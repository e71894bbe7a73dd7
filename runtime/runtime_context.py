"""``get_runtime_context()``: who and where the calling code is (Ray's RuntimeContext)."""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["HexId", "RuntimeContext", "get_runtime_context"]


class RuntimeContext:
    """Ids of the current job, node, worker, task and actor, and the task's resources."""

    def __init__(self, core: Any) -> None:
        self._core = core

    def get_job_id(self) -> str:
        spec = self._core.current_task
        job_id = spec.job_id if spec is not None else self._core.job_id
        return job_id.to_bytes(4, "little").hex()

    @property
    def job_id(self) -> str:
        """Deprecated (as in Ray): use ``get_job_id()``."""
        return _deprecated_id(self.get_job_id(), "get_job_id")

    def get_node_id(self) -> str:
        return self._core.node_id.hex()

    @property
    def node_id(self) -> str:
        """Deprecated (as in Ray): use ``get_node_id()``."""
        return _deprecated_id(self.get_node_id(), "get_node_id")

    @property
    def task_id(self) -> str | None:
        """Deprecated (as in Ray): use ``get_task_id()``."""
        return _deprecated_id(self.get_task_id(), "get_task_id")

    @property
    def actor_id(self) -> str | None:
        """Deprecated (as in Ray): use ``get_actor_id()``."""
        return _deprecated_id(self.get_actor_id(), "get_actor_id")

    def get_worker_id(self) -> str:
        return self._core.worker_id.hex()

    def get_task_id(self) -> str | None:
        spec = self._core.current_task
        return spec.task_id.hex() if spec is not None else None

    def get_task_name(self) -> str | None:
        spec = self._core.current_task
        return spec.name if spec is not None else None

    def get_actor_id(self) -> str | None:
        return self._core.actor_id.hex() or None

    @property
    def namespace(self) -> str:
        return self._core.namespace

    def get_assigned_resources(self) -> dict[str, float]:
        spec = self._core.current_task
        if spec is not None and spec.method:
            return dict(self._core.actor_resources)
        return dict(spec.resources) if spec is not None else {}

    @property
    def current_actor(self) -> Any:
        """A handle to the actor this code runs in (RuntimeError outside an actor)."""
        from . import _messages as m
        from .actor import ActorHandle

        actor_id = self._core.actor_id
        if not actor_id:
            raise RuntimeError("This method is only available in an actor.")
        # The actor's handle to itself does not keep it alive (it would never go otherwise).
        record = self._core.request("gcs", m.WaitActor(actor_id))
        return ActorHandle._from_record(record, keep_alive=False)

    def get_actor_name(self) -> str | None:
        """The current actor's name ("" for an unnamed one; None outside an actor)."""
        from . import _messages as m

        actor_id = self._core.actor_id
        if not actor_id:
            return None
        return self._core.request("gcs", m.WaitActor(actor_id))["name"]

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Whether the current actor runs in a restarted process (``max_restarts``)."""
        executor = self._core.executor
        return bool(self._core.actor_id and executor is not None and executor.actor_restarts)

    @property
    def gcs_address(self) -> str:
        return self._core.gcs_address

    def get_placement_group_id(self) -> str | None:
        """The hex id of the placement group the current task or actor runs in (None in the
        driver, or outside any group)."""
        from .util.placement_group import current_placement_group_id

        return current_placement_group_id()

    @property
    def current_placement_group_id(self) -> str | None:
        """Deprecated (as in Ray): use ``get_placement_group_id()``."""
        return _deprecated_id(self.get_placement_group_id(), "get_placement_group_id")

    def get_runtime_env_string(self) -> str:
        return "{}"

    @property
    def runtime_env(self) -> dict[str, Any]:
        return {}

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        from .api import get_gpu_ids

        return {"GPU": [str(i) for i in get_gpu_ids()]}

    def get(self) -> dict[str, Any]:
        """The ids as a dict; ``task_id`` and ``actor_id`` only where there is one (Ray's)."""
        context = {"job_id": self.get_job_id(), "node_id": self.get_node_id(),
                   "worker_id": self.get_worker_id(), "namespace": self.namespace}
        for key, value in (("task_id", self.get_task_id()), ("actor_id", self.get_actor_id())):
            if value is not None:
                context[key] = value
        return context


class HexId(str):
    """A hex id from one of Ray's deprecated properties (``job_id``, ``node_id``...): the
    string ``get_*_id()`` returns, with ``.hex()`` as Ray's id objects have."""

    __slots__ = ()

    def hex(self) -> str:
        return str(self)


def _deprecated_id(value: str | None, method: str) -> HexId | None:
    warnings.warn(f"Use {method}() instead", DeprecationWarning, stacklevel=3)
    return None if value is None else HexId(value)


def get_runtime_context() -> RuntimeContext:
    from .api import _core

    return RuntimeContext(_core())
