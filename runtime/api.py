"""The driver API: ``init``, ``shutdown``, ``get``, ``wait``, ``put`` (Ray's signatures)."""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import operator
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import _context
from . import _messages as m
from ._ids import random_id
from ._session import Session, find_token
from ._shm import SHM_DIR
from .core.object_ref import ObjectRef
from .exceptions import ActorDeathReason, RaySystemError
from .job_config import JobConfig
from .node import HeadNode, start_head

if TYPE_CHECKING:  # the driver's runtime loads in init(), once the head's processes start
    from .actor import ActorHandle
    from .core.core_worker import CoreWorker

__all__ = [
    "RuntimeInfo",
    "available_resources",
    "cancel",
    "cluster_resources",
    "get",
    "get_actor",
    "get_gpu_ids",
    "init",
    "is_initialized",
    "kill",
    "nodes",
    "put",
    "shutdown",
    "wait",
]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_head: HeadNode | None = None


class RuntimeInfo(Mapping):
    """What ``init`` returns: the cluster's addresses (a read-only mapping, like Ray's)."""

    def __init__(self, **info: Any) -> None:
        self._info = info

    def __getitem__(self, key: str) -> Any:
        return self._info[key]

    def __iter__(self):
        return iter(self._info)

    def __len__(self) -> int:
        return len(self._info)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._info[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def address_info(self) -> dict[str, Any]:
        return dict(self._info)

    def __repr__(self) -> str:
        return f"RuntimeInfo({self._info})"

    def __enter__(self) -> RuntimeInfo:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """``with init(...):`` shuts the runtime down at the end of the block (Ray's)."""
        shutdown()


def _check_init_arguments(address: str | None, num_cpus: Any, num_gpus: Any,
                          resources: Any, object_store_memory: Any) -> None:
    if address not in (None, "local") and (num_cpus is not None or num_gpus is not None
                                           or resources or object_store_memory):
        raise ValueError(
            "When connecting to an existing cluster, num_cpus, num_gpus, resources and "
            "object_store_memory must not be provided: they belong to the cluster's nodes."
        )
    for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    if resources is not None:
        if not isinstance(resources, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and v >= 0
            for k, v in resources.items()
        ):
            raise ValueError(f"resources must map names to non-negative numbers, "
                             f"got {resources!r}")
        if "CPU" in resources or "GPU" in resources:
            raise ValueError("Use the 'num_cpus' and 'num_gpus' keyword instead of 'CPU' and "
                             "'GPU' in 'resources' keyword")
    if object_store_memory is not None and (not isinstance(object_store_memory, int)
                                            or object_store_memory < 1 << 20):
        raise ValueError(f"object_store_memory must be a number of bytes of at least 1 MiB, "
                         f"got {object_store_memory!r}")


def _resolve_address(address: Any) -> str | None:
    """None means: start a local cluster. Otherwise the GCS address to connect to."""
    if not address:  # None, "" or Ray's ``init({})``
        address = os.environ.get("CELLFLEET_ADDRESS") or None
    if address in (None, "local"):
        return None
    if address == "auto":
        session = Session.current()
        if session is None:
            raise ConnectionError(
                "Could not find any running cellfleet instance. Start one with "
                "'cellfleet start --head', or call init() without an address."
            )
        return session.info()["gcs_address"]
    host, _, port = address.removeprefix("cellfleet://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address={address!r} is not understood: use 'host:port', 'auto' or "
                         "None (start a local cluster)")
    return f"{host}:{port}"


def _check_reachable(gcs_address: str) -> None:
    """ConnectionError when nothing accepts connections at ``gcs_address``."""
    host, _, port = gcs_address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConnectionError(
            f"nothing answers at {gcs_address} ({exc.strerror or exc}): is a cluster running "
            "there? Start one with 'cellfleet start --head', or call init() without an "
            "address to start a local one."
        ) from None


async def _find_local_raylet(gcs_address: str, token: bytes) -> str:
    from ._rpc import connect

    conn = await connect(gcs_address, token, timeout=5)
    try:
        nodes = await conn.request(m.GetNodes())
    finally:
        conn.close()
    # This machine's node: its arena is in this machine's /dev/shm (the driver maps it); the
    # node on the GCS's host first, then the one `cellfleet start --address` started here.
    alive = [n for n in nodes if n["alive"]]
    here = [n for n in alive if os.path.exists(os.path.join(SHM_DIR, n["store_name"]))]
    host = gcs_address.rpartition(":")[0]
    for node in here:
        if node["raylet_address"].rpartition(":")[0] == host:
            return node["raylet_address"]
    if here or alive:
        return (here or alive)[0]["raylet_address"]
    raise ConnectionError(f"the cluster at {gcs_address} has no live node to run work on")


def _in_thread(coro) -> Any:
    """Run a coroutine to completion even when the caller's thread runs an event loop."""
    import asyncio

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def init(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    gcs_storage: str | None = None,
    namespace: str | None = None,
    ignore_reinit_error: bool = False,
    log_to_driver: bool = True,
    local_mode: bool = False,
    job_config: JobConfig | None = None,
    _memory: float | None = None,
    **unsupported: Any,
) -> RuntimeInfo:
    """Start a local cluster (GCS, raylet, workers) or connect to a running one.

    ``address``: None starts a local head (or uses ``CELLFLEET_ADDRESS``); ``"auto"`` finds
    the cluster ``cellfleet start`` made on this machine; ``"host:port"`` is a GCS address.
    ``gcs_storage``: None keeps control state in memory; ``"redis://:PASSWORD@host:port"`` in
    Redis, which must demand a password (``?password_file=PATH`` reads it from a file).
    ``local_mode=True`` (deprecated in Ray) runs tasks in worker processes all the same.
    ``job_config``: a ``JobConfig``; its ``code_search_path`` is put on the workers' path.
    ``_memory``: the node's ``memory`` resource in bytes (rounded down, as tasks' ``memory``).
    """
    global _head
    if local_mode:
        warnings.warn("local_mode=True is not supported: tasks and actors run in worker "
                      "processes as without it", UserWarning, stacklevel=2)
    if job_config is not None and not isinstance(job_config, JobConfig):
        raise TypeError(f"job_config must be a JobConfig, got {type(job_config).__name__}")
    ignored = {"include_dashboard", "dashboard_host", "dashboard_port", "configure_logging",
               "logging_level", "_temp_dir", "runtime_env", "_system_config",
               "_node_ip_address", "_metrics_export_port", "_redis_password",
               "_plasma_directory", "_enable_object_reconstruction", "_tracing_startup_hook"}
    unknown = set(unsupported) - ignored
    if unknown:
        raise TypeError(f"init() got unexpected keyword argument(s) {sorted(unknown)}")
    with _lock:
        if _context.core is not None:
            if ignore_reinit_error:
                return _runtime_info()
            raise RuntimeError(
                "Maybe you called ray.init twice by accident? This error can be suppressed by "
                "passing in 'ignore_reinit_error=True' or by calling 'ray.shutdown()' prior "
                "to 'ray.init()'."
            )
        _check_init_arguments(address, num_cpus, num_gpus, resources, object_store_memory)
        if _memory is not None:
            if not isinstance(_memory, (int, float)) or _memory < 0:
                raise ValueError(f"_memory must be a non-negative number of bytes, got {_memory!r}")
            resources = {**(resources or {}), "memory": float(int(_memory))}
        gcs_address = _resolve_address(address)
        if namespace is None and job_config is not None:
            namespace = job_config.ray_namespace
        head = None
        if gcs_address is None:
            _share_code_paths(job_config)
            head = start_head(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                              object_store_memory=object_store_memory, gcs_storage=gcs_storage)
            gcs_address, raylet_address = head.gcs_address, head.raylet_address
            token = head.session.token()
        else:
            _check_reachable(gcs_address)
            token = find_token(gcs_address)
            raylet_address = _in_thread(_find_local_raylet(gcs_address, token))
        from .core.core_worker import CoreWorker, print_logs

        # The driver listens where its node does: workers on other nodes dial it there.
        core = CoreWorker(kind="driver", token=token, gcs_address=gcs_address,
                          raylet_address=raylet_address, worker_id=random_id(),
                          namespace=namespace or "", host=raylet_address.rpartition(":")[0])
        try:
            core.start(register_job=True, log_to_driver=log_to_driver,
                       entrypoint=" ".join(sys.argv))
        except BaseException as exc:
            core.shutdown()
            if head is not None:
                reason = head.startup_failure()
                head.stop()
                if reason:
                    raise ConnectionError(f"the local cluster did not start: {reason}") from exc
            raise
        if head is not None:  # as Ray's init: return once the GCS counts the node's resources
            core.run(_until_registered(core, head.node_id, NODE_WAIT_S))
        if log_to_driver:
            core.log_handler = print_logs
        _context.core = core
        _head = head
        atexit.register(shutdown)
        return _runtime_info()


def _share_code_paths(job_config: JobConfig | None) -> None:
    """Let the workers of a cluster ``init`` starts import what the driver can: the driver
    script's directory and the job's ``code_search_path`` go on their ``PYTHONPATH``."""
    paths = list(job_config.code_search_path) if job_config is not None else []
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    # A script run as ``python path/to/script.py`` (not ``-m``, which has a __spec__)
    if script and getattr(main, "__spec__", None) is None and not hasattr(sys, "ps1"):
        paths.append(os.path.dirname(os.path.abspath(script)))
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    added = [p for p in dict.fromkeys(paths) if p not in current]
    if added:
        os.environ["PYTHONPATH"] = os.pathsep.join(current + added)


def _runtime_info() -> RuntimeInfo:
    core = _context.core
    return RuntimeInfo(
        address=core.gcs_address,
        gcs_address=core.gcs_address,
        raylet_address=core.raylet_address,
        node_id=core.node_id.hex(),
        job_id=core.job_id,
        session_dir=str(_head.session.path) if _head is not None else None,
        dashboard_url=None,
    )


def is_initialized() -> bool:
    """True once ``init`` has run in this process (always in a worker)."""
    return _context.core is not None


def shutdown() -> None:
    """Disconnect; stop the processes ``init`` started (a connected cluster keeps running)."""
    global _head
    with _lock:
        core, _context.core = _context.core, None
        if core is not None:
            if core.log_handler is not None:
                core.output_barrier()  # its tasks' last prints are shown before it goes
            core.shutdown()
        if _head is not None:
            _head.stop()
            _head = None


def _core() -> CoreWorker:
    """This process's core worker; ``init()`` first unless ``RAY_ENABLE_AUTO_CONNECT=0``."""
    core = _context.core
    if core is None:
        if os.environ.get("RAY_ENABLE_AUTO_CONNECT", "1") == "0":
            raise RaySystemError("Ray has not been started yet. You can start Ray with "
                                 "'ray.init()'.")
        init()
        core = _context.core
    return core


def get(object_refs: ObjectRef | list[ObjectRef], *, timeout: float | None = None) -> Any:
    """The value(s) of one ref or a list of refs, waiting for them; raises a task's error."""
    core = _core()
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be None or >= 0, got {timeout!r}")
    if isinstance(object_refs, ObjectRef):
        return core.get([object_refs], timeout)[0]
    if not isinstance(object_refs, (list, tuple)) or not all(
        isinstance(r, ObjectRef) for r in object_refs
    ):
        raise ValueError(
            "'object_refs' must either be an ObjectRef or a list of ObjectRefs, got "
            f"{type(object_refs).__name__}"
        )
    return core.get(list(object_refs), timeout)


def wait(object_refs: list[ObjectRef], *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Split refs into ``(ready, not_ready)`` (input order) once ``num_returns`` are ready."""
    core = _core()
    if isinstance(object_refs, ObjectRef) or not isinstance(object_refs, (list, tuple)):
        raise TypeError("wait() expected a list of ObjectRef, got "
                        f"{type(object_refs).__name__}")
    if not object_refs:
        return [], []
    try:
        ids = list(map(_object_id, object_refs))  # also the type check, in one pass
    except AttributeError:
        ids = None
    if ids is None or not isinstance(object_refs[0], ObjectRef):
        if not all(isinstance(r, ObjectRef) for r in object_refs):
            raise TypeError("wait() expected a list of ObjectRef") from None
    if len(set(ids)) != len(ids):
        raise ValueError("Wait requires a list of unique object refs.")
    if num_returns <= 0 and object_refs:
        raise ValueError(f"Invalid number of objects to return {num_returns}.")
    if num_returns > len(object_refs):
        raise ValueError("num_returns cannot be greater than the number of objects provided "
                         f"to wait ({num_returns} > {len(object_refs)}).")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be None or >= 0, got {timeout!r}")
    return core.wait(list(object_refs), num_returns, timeout, ids)


_object_id = operator.attrgetter("_id")


def put(value: Any) -> ObjectRef:
    """Store a value in the cluster; the returned ref can be passed to tasks."""
    return _core().put(value)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The live actor called ``name``; ValueError if there is none."""
    core = _core()
    if not isinstance(name, str) or not name:
        raise ValueError("Please supply a non-empty value to get_actor")
    record = core.request("gcs", m.GetNamedActor(
        name, core.namespace if namespace is None else namespace))
    if record is None:
        raise ValueError(
            f"Failed to look up actor with name '{name}'. This could because 1. You are "
            "trying to look up a named actor you didn't create. 2. The named actor died. "
            "3. You did not use a namespace matching the namespace of the actor."
        )
    from .actor import ActorHandle

    return ActorHandle._from_record(record)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kill an actor at once: pending and later calls fail with ActorDiedError.

    Returns once the cluster has the actor as dead (its name is free again). With
    ``no_restart=False`` only its process is killed, and its owner restarts it within
    ``max_restarts``.
    """
    from .actor import ActorHandle

    core = _core()
    if not isinstance(actor, ActorHandle):
        raise ValueError("kill() only supported for actors. For tasks, try cancel(). "
                         f"Got: {type(actor).__name__}.")
    actor_id = actor._actor_id
    core.call_soon(lambda: core.actor_submitter.kill(actor_id, ActorDeathReason.KILLED,
                                                     restart=not no_restart))
    if no_restart:
        core.run(_until_dead(core, actor_id, KILL_WAIT_S))


KILL_WAIT_S = 5.0  # how long kill() waits for the GCS to record the actor's death
NODE_WAIT_S = 10.0  # how long init() waits for the GCS to list the node it started


async def _until_registered(core: CoreWorker, node_id: bytes, limit: float) -> None:
    """Wait (at most ``limit`` seconds) until the GCS lists node ``node_id`` as alive."""
    import asyncio

    deadline = time.monotonic() + limit
    delay = 0.002
    while time.monotonic() < deadline:
        try:
            nodes = await core.gcs.request(m.GetNodes())
        except Exception:  # noqa: BLE001 - the GCS went: the next call says so
            return
        if any(n["node_id"] == node_id and n["alive"] for n in nodes):
            return
        await asyncio.sleep(delay)  # the raylet is registering
        delay = min(delay * 2, 0.1)


async def _until_dead(core: CoreWorker, actor_id: bytes, limit: float) -> None:
    """Wait (at most ``limit`` seconds) until the GCS has the actor as dead."""
    import asyncio

    deadline = time.monotonic() + limit
    delay = 0.002
    while time.monotonic() < deadline:
        try:  # answered once the actor is ALIVE or DEAD
            record = await asyncio.wait_for(core.gcs.request(m.WaitActor(actor_id)),
                                            deadline - time.monotonic())
        except Exception:  # noqa: BLE001 - no such actor, the GCS went, or the time is up
            return
        if not record or record.get("state") == "DEAD":
            return
        await asyncio.sleep(delay)  # the kill's update is on its way to the GCS
        delay = min(delay * 2, 0.1)


def cancel(object_ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that makes ``object_ref``; its ``get`` raises TaskCancelledError.

    A queued task never runs; a running one gets KeyboardInterrupt (``force``: its worker
    is killed); ``recursive`` cancels the tasks it submitted too.
    """
    core = _core()
    if not isinstance(object_ref, ObjectRef):
        raise TypeError("cancel() only supported for tasks: pass the ObjectRef a .remote() "
                        f"call returned, got {type(object_ref).__name__}")
    entry = core.refs.entries.get(object_ref._id)
    if entry is None or not entry.owned:
        raise ValueError("cancel() works in the process that submitted the task")
    if force and entry.spec is not None and entry.spec.actor_id:
        raise ValueError("force=True is not supported for actor tasks: use kill() on the "
                         "actor")
    core.cancel(object_ref, force=force, recursive=recursive)


def nodes() -> list[dict[str, Any]]:
    """The cluster's nodes with Ray's keys (NodeID, Alive, NodeManagerAddress, Resources...)."""
    out = []
    for node in _core().request("gcs", m.GetNodes()):
        host, _, port = node["raylet_address"].rpartition(":")
        out.append({
            "NodeID": node["node_id"].hex(), "Alive": node["alive"], "alive": node["alive"],
            "NodeManagerAddress": host, "NodeManagerHostname": host,
            "NodeManagerPort": int(port), "ObjectStoreSocketName": node["store_name"],
            "Resources": node["resources"] if node["alive"] else {},
            "DeathReason": node["death_reason"], "Labels": {},
        })
    return out


def cluster_resources() -> dict[str, float]:
    """Total resources of the live nodes."""
    total: dict[str, float] = {}
    for node in _core().request("gcs", m.GetNodes()):
        if node["alive"]:
            for key, value in node["resources"].items():
                total[key] = total.get(key, 0.0) + value
    return total


def available_resources() -> dict[str, float]:
    """Free resources of the live nodes (this node's exact, others' as of their heartbeat)."""
    core = _core()
    local = core.request("raylet", m.GetNodeStats())
    total: dict[str, float] = {}
    for node in core.request("gcs", m.GetNodes()):
        if not node["alive"]:
            continue
        available = local["available"] if node["node_id"] == core.node_id else node["available"]
        for key, value in available.items():
            if value > 0:
                total[key] = total.get(key, 0.0) + value
    return total


def get_gpu_ids() -> list[int]:
    """GPU ids assigned to the current task or actor (empty on a CPU-only task)."""
    from .runtime_context import get_runtime_context

    gpus = get_runtime_context().get_assigned_resources().get("GPU", 0)
    executor = _core().executor
    return list(executor.gpu_ids) if gpus and executor is not None else []
