"""The core worker: the part of every driver and worker that owns objects and submits tasks.

Two threads meet here. The caller's thread (the notebook, a script, a task's body) serializes
values and waits for results; the I/O thread runs an event loop with every connection: the
node's raylet, the GCS, leased workers and other owners. The caller hands work to the I/O
thread through one ordered queue (``_queue``) and wakes it at most once per batch, so a burst
of ``.remote()`` calls costs one wake-up, not one per call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import hashlib
import logging
import operator
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

from .. import _context, exceptions
from .. import _messages as m
from .._ids import IdGenerator, object_id_for
from .._rpc import Connection, Listener, connect, serve
from .._serialization import (
    INLINE_THRESHOLD,
    KIND_ERROR,
    SerializedObject,
    deserialize_inline,
    deserialize_view,
    dumps_function,
    find_unserializable,
    serialize,
)
from .._service import raise_fd_limit, reconnect_delays
from .._shm import SharedArena
from .._tuning import tune_process
from .actor_submitter import ActorSubmitter
from .dependency_resolver import DependencyResolver
from .events import FLUSH_INTERVAL_S, EventBuffer
from .lineage import LineageTable
from .memory_store import MemoryStore, error_payload, is_error
from .object_directory import ObjectDirectory, pull_source
from .object_ref import ObjectRef
from .peers import PeerCache
from .pin_cache import GRACE_S as PIN_GRACE_S
from .pin_cache import PinCache
from .reference_counter import ObjectEntry, ReferenceCounter
from .submitter import LeasedWorker, TaskSubmitter
from .task_manager import (
    ArgumentsResolved,
    Cancel,
    CancelRequested,
    Complete,
    Dequeued,
    RebuildArgument,
    ResultReceived,
    Retry,
    Schedule,
    SchedulingFailed,
    TaskManager,
    TaskSubmitted,
    WorkerLost,
)
from .task_spec import ArgSlot, TaskResult, TaskSpec

__all__ = ["CoreWorker"]

logger = logging.getLogger(__name__)

DRIVER_TASK_ID = bytes(16)
LARGE_COPY_BYTES = 256 << 20  # copies at least this large report their progress
LARGE_PULL_BYTES = 64 << 20  # objects pulled from another node this large show progress
PROGRESS_EVERY_S = 0.25
MAX_PULLS_SHOWN = 64  # pulls whose progress is remembered at once
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # call sites
BORROW_ACK_TIMEOUT_S = 10.0  # an owner that does not answer by then is dead or wedged
submission_tag: contextvars.ContextVar[str] = contextvars.ContextVar("cellfleet_tag", default="")
_current_task: contextvars.ContextVar[TaskSpec | None] = contextvars.ContextVar(
    "cellfleet_task", default=None)


class CoreWorker:
    """Owner-side runtime of one process: refs, objects, submission, get/wait/put."""

    def __init__(self, *, kind: str, token: bytes, gcs_address: str, raylet_address: str,
                 worker_id: bytes, namespace: str = "", host: str = "127.0.0.1") -> None:
        self.kind = kind
        self.token = token
        self.gcs_address = gcs_address
        self.raylet_address = raylet_address
        self.worker_id = worker_id
        self._namespace = namespace
        self.host = host
        self.address = ""
        self.job_id = 0
        self.node_id = b""
        self.ids = IdGenerator()
        self.events = EventBuffer()
        self.functions: dict[bytes, tuple[str, bytes]] = {}
        self.log_handler: Callable[[list], None] | None = None
        self.executor: Any = None  # set in worker processes (worker.executor.TaskExecutor)
        self.actor_id: bytes = b""  # set in the worker of an actor
        self.actor_resources: dict[str, float] = {}  # what that actor holds to run
        self.arena: SharedArena | None = None
        self.raylet: Connection | None = None
        self.gcs: Connection | None = None
        self._queue: deque = deque()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self.peers: PeerCache  # set in start(), once the address is known
        # Borrow registrations the owners have not acknowledged yet (see after_borrows).
        self._borrows_in_flight: set[asyncio.Future] = set()
        self.pull_progress: dict[bytes, tuple[int, int, str]] = {}  # object -> done, total, from
        self.pins = PinCache()
        self.tasks = TaskManager()
        self.resolver = DependencyResolver()
        self.lineage = LineageTable()
        self.directory = ObjectDirectory()  # other nodes' copies of this process's objects
        self._exported: set[bytes] = set()
        self._closed = False
        self.submitter: TaskSubmitter | None = None
        self.actor_submitter: ActorSubmitter | None = None
        self.refs: ReferenceCounter  # set in start(), once the address is known

    @property
    def namespace(self) -> str:
        """The namespace of the job whose code is running here."""
        spec = _current_task.get()
        return spec.namespace if spec is not None else self._namespace

    @property
    def current_job_id(self) -> int:
        """The job whose code is running here (a worker serves many jobs)."""
        spec = _current_task.get()
        return spec.job_id if spec is not None else self.job_id

    @property
    def current_task(self) -> TaskSpec | None:
        """The task running in this thread (or asyncio task), if any."""
        return _current_task.get()

    @current_task.setter
    def current_task(self, spec: TaskSpec | None) -> None:
        _current_task.set(spec)

    # -- life cycle -----------------------------------------------------------------------

    def start(self, *, register_job: bool, log_to_driver: bool, entrypoint: str = "",
              timeout: float = 30.0) -> None:
        """Start the I/O thread and connect to the node and the GCS."""
        raise_fd_limit()
        tune_process()
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run_loop, args=(ready,),
                                        name="cellfleet-io", daemon=True)
        self._thread.start()
        self._loop = ready.result(timeout)
        self.run(self._connect(register_job, log_to_driver, entrypoint), timeout)

    def _run_loop(self, ready: concurrent.futures.Future) -> None:
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        ready.set_result(loop)
        loop.run_forever()
        loop.close()

    async def _connect(self, register_job: bool, log_to_driver: bool, entrypoint: str) -> None:
        self._handler_table = handlers = self._handlers()
        # Its worker id is its identity in the handshake: whoever leases this worker expects it.
        self._server, self.address = await serve(handlers, self.token, host=self.host,
                                                 listener=Listener(self.worker_id))
        self.refs = ReferenceCounter(self.address, self._queue, self._wake, self._on_free,
                                     self._on_borrow)
        self.peers = PeerCache(self.address, self.token, handlers)
        self.memory_store = MemoryStore(self.refs.lock)
        self.raylet, self.gcs = await asyncio.gather(
            connect(self.raylet_address, self.token, handlers),
            connect(self.gcs_address, self.token, handlers),
        )
        self._subscriptions: list[str] = ["exits"]
        self.gcs.send(m.Subscribe("exits"))
        self.gcs.closed.add_done_callback(self._gcs_lost)
        node = await self.raylet.request(
            m.RegisterClient(self.worker_id, self.address, os.getpid(), self.kind, 0)
        )
        self.node_id = node["node_id"]
        self.arena = SharedArena.attach(node["store_name"])
        if register_job:
            self.job_id = await self.gcs.request(
                m.RegisterJob(self.address, os.getpid(), self._namespace, entrypoint)
            )
            if log_to_driver:  # this job's lines only
                self._subscriptions.append("logs")
                self.gcs.send(m.Subscribe("logs", self.job_id))
        self.submitter = TaskSubmitter(
            raylet=lambda: self.raylet,
            connect=self.peers.connect,
            export=self.export_to,
            on_pushed=self._task_pushed,
            on_failed=self._task_failed_to_schedule,
            on_worker_lost=self._task_worker_lost,
            on_infeasible=self.task_infeasible,
        )
        self.actor_submitter = ActorSubmitter(self)
        self._loop.call_later(FLUSH_INTERVAL_S, self._flush_events)

    def _gcs_lost(self, _: Any) -> None:
        if not self._closed:
            logger.warning("lost the GCS at %s; reconnecting", self.gcs_address)
            self._loop.create_task(self._reconnect_gcs())

    async def _reconnect_gcs(self) -> None:
        """Keep trying until the GCS is back (with Redis storage it reloads the cluster)."""
        delays = reconnect_delays()
        while not self._closed:
            try:
                conn = await connect(self.gcs_address, self.token, self._handler_table,
                                     timeout=2)
            except (ConnectionError, OSError, exceptions.RayError):
                await asyncio.sleep(next(delays))
                continue
            for channel in self._subscriptions:
                conn.send(m.Subscribe(channel, self.job_id if channel == "logs" else -1))
            for function_id, (name, blob) in self.functions.items():
                conn.send(m.ExportFunction(function_id, name, blob))
            self.gcs = conn
            conn.closed.add_done_callback(self._gcs_lost)
            self.actor_submitter.gcs_reconnected()  # actor states the old connection lost
            return

    def run(self, coro, timeout: float | None = None) -> Any:
        """Run a coroutine on the I/O thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def request(self, target: str, message: m.Message, timeout: float | None = 30) -> Any:
        """Ask the ``"gcs"`` or the ``"raylet"`` and wait for the reply (not on the hot path).

        This process's buffered events go first, so the GCS answers with its own tasks in.
        """

        async def ask() -> Any:
            self.events.flush(self.gcs)
            return await getattr(self, target).request(message, timeout=timeout)

        return self.run(ask(), None if timeout is None else timeout + 1)  # its error says more

    def output_barrier(self, timeout: float = 0.5) -> None:
        """Wait until what finished tasks printed has reached this process: a worker sends its
        task's output to the GCS before the result, and the GCS publishes it here on the
        connection that answers this request, so once the answer is here the lines are too.
        A slow or unreachable GCS only shortens the wait to ``timeout``."""
        if self._closed or self.gcs is None or not self.gcs.is_open:
            return
        try:
            self.request("gcs", m.KvGet("cellfleet", b"output-barrier"), timeout=timeout)
        except Exception:  # noqa: BLE001 - output may be late, never the caller
            pass

    def shutdown(self) -> None:
        """Flush events, return leases, close connections and stop the I/O thread."""
        if self._closed or self._loop is None:
            return
        self._closed = True

        async def close() -> None:
            if self.submitter is not None:
                self.submitter.shutdown()
                self.actor_submitter.shutdown()
            self.events.flush(self.gcs)
            await asyncio.sleep(0)
            self.peers.close()
            for conn in (self.raylet, self.gcs):
                if conn is not None:
                    conn.close()
            if self._server is not None:
                self._server.close()

        try:
            self.run(close(), timeout=5)
        except Exception:  # a dead runtime cannot be closed more
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.arena is not None:
            self.arena.close()

    # -- the I/O thread's queue -----------------------------------------------------------

    def _wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: the process is shutting down
                pass

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the I/O thread, in order with everything queued before it."""
        self._queue.append(fn)
        self._wake()

    def _drain(self) -> None:
        self._wake_pending = False
        queue = self._queue
        releases: list[bytes] = []
        while queue:
            item = queue.popleft()
            if type(item) is bytes:
                releases.append(item)
                continue
            if releases:
                self.refs.apply_releases(releases)
                releases = []
            try:
                item()
            except Exception:
                logger.exception("internal operation failed")
        if releases:
            self.refs.apply_releases(releases)

    def _flush_events(self) -> None:
        self.events.flush(self.gcs, everything=False)
        if not self._closed:
            self._loop.call_later(FLUSH_INTERVAL_S, self._flush_events)

    # -- connections ----------------------------------------------------------------------

    def _handlers(self) -> dict:
        return {
            m.PushTasks: self._push_tasks,
            m.PullProgress: self._pull_progressed,
            m.DefineFunctions: self._define_functions,
            m.TaskResults: self._task_results,
            m.GetObjectStatus: self._get_object_status,
            m.ObjectLocationAdded: self._location_added,
            m.ObjectLocationRemoved: self._location_removed,
            m.ReconstructObject: self._reconstruct_object,
            m.AddBorrowers: lambda conn, msg: self.refs.add_borrower(msg.object_ids,
                                                                     msg.borrower),
            m.RemoveBorrowers: lambda conn, msg: self.refs.remove_borrower(msg.object_ids,
                                                                           msg.borrower),
            m.Publish: self._published,
            m.KillActor: lambda conn, msg: self._executor().kill(msg.reason),
            m.AssignGpus: lambda conn, msg: self._executor().assign_gpus(msg.gpu_ids),
            m.CancelTask: lambda conn, msg: self._executor().cancel(
                msg.task_id, msg.force, msg.recursive),
            m.StealTasks: lambda conn, msg: self._executor().steal(msg.task_ids),
        }

    def _register_borrow(self, owner: str, object_ids: list[bytes], borrower: str) -> None:
        """Tell ``owner`` that ``borrower`` holds refs of its objects; tracked until acked."""
        fut = self.peers.request(owner, m.AddBorrowers(object_ids, borrower))
        self._borrows_in_flight.add(fut)
        fut.add_done_callback(self._borrow_acked)

    def _borrow_acked(self, fut: asyncio.Future) -> None:
        self._borrows_in_flight.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            logger.info("an owner did not take a borrow: %s", fut.exception())

    def after_borrows(self, send: Callable[[], None]) -> None:
        """Call ``send`` once every borrow registered so far is acknowledged by its owner.

        Task results go through here: a process that received a ref inside a task's
        arguments registers as its borrower with the owner directly, while the caller, once
        it has the result, may drop its own borrow over another connection. Answering only
        after the owner took the new borrow keeps the owner from freeing the object between
        the two (the order Ray gets from borrowers reporting their refs in the task reply).
        """
        if not self._borrows_in_flight:
            send()
            return
        waiting = list(self._borrows_in_flight)

        async def later() -> None:
            await asyncio.wait(waiting, timeout=BORROW_ACK_TIMEOUT_S)
            send()

        self._loop.create_task(later())

    def _published(self, conn: Connection, msg: m.Publish) -> None:
        if msg.channel == "exits":
            self.refs.borrower_gone(msg.data)  # whatever that process borrowed, it holds no more
            self._copies_changed(self.directory.node_died(msg.data))  # gone with their node
        elif msg.channel == "logs" and self.log_handler is not None:
            lines = [line for line in msg.data if line[0] == self.job_id]
            if lines:
                self.log_handler(lines)

    # -- functions ------------------------------------------------------------------------

    def register_function(self, fn: Callable, name: str, blob: bytes | None = None) -> bytes:
        """Pickle a function once (or take its pickle, ``blob``); its id is the pickle's hash."""
        blob = blob or dumps_function(fn)
        function_id = hashlib.sha1(blob).digest()[:16]
        if function_id not in self.functions:
            self.functions[function_id] = (name, blob)
            self.call_soon(lambda: self.gcs.send(m.ExportFunction(function_id, name, blob)))
        return function_id

    def export_to(self, conn: Connection, spec: TaskSpec) -> None:
        sent: set = conn.state
        if spec.function_id and spec.function_id not in sent:
            name, blob = self.functions[spec.function_id]
            conn.send(m.DefineFunctions([[spec.function_id, name, blob]]))
            sent.add(spec.function_id)

    def _define_functions(self, conn: Connection, msg: m.DefineFunctions) -> None:
        if self.executor is not None:
            self.executor.define_functions(msg.functions)

    def _executor(self) -> Any:
        if self.executor is None:
            raise exceptions.RaySystemError("this process does not execute tasks")
        return self.executor

    def _push_tasks(self, conn: Connection, msg: m.PushTasks) -> None:
        self._executor().push(conn, msg.tasks)

    # -- put ------------------------------------------------------------------------------

    def put(self, value: Any) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError(
                "put() of an ObjectRef is not allowed: pass the ref itself, or wrap it in a "
                "list to store a ref inside an object"
            )
        try:
            obj = serialize(value)
        except Exception as exc:
            raise TypeError(f"Could not serialize the put value {value!r:.100}: {exc}") from exc
        return self._put_serialized(obj)

    def _put_serialized(self, obj: SerializedObject) -> ObjectRef:
        object_id = object_id_for(self.ids.task_id(), 0)
        payload = self.store_payload(object_id, obj, self.address)
        self.refs.create_owned(object_id, payload=payload, size=obj.size)
        if obj.contained_refs:
            self.refs.set_contains(object_id, [[r._id, r._owner] for r in obj.contained_refs])
        self.events.object(object_id, "CREATED", {
            "size": obj.size, "owner": self.address, "node_id": self.node_id.hex(),
            "where": "inline" if payload[0] == "i" else "shared_memory", "source": "put",
            "job_id": self.job_id, "tag": submission_tag.get(),
            "call_site": next((f"{f.f_code.co_filename}:{n}" for f, n in traceback.walk_stack(None)
                               if not f.f_code.co_filename.startswith(_PACKAGE_DIR)), None),
        })
        return ObjectRef(object_id, self.address)

    def store_payload(self, object_id: bytes, obj: SerializedObject, owner: str) -> list:
        """Inline a small object; write a large one into this node's arena."""
        size = obj.size
        if size <= INLINE_THRESHOLD:
            return ["i", obj.inline()]
        fut = asyncio.run_coroutine_threadsafe(self._allocate(object_id, size, owner), self._loop)
        offset = fut.result()
        if offset != m.ALREADY_STORED:  # a re-run's output this node holds already is kept
            progress = _context.copy_progress if size >= LARGE_COPY_BYTES else None
            self.arena.write(offset, obj.chunks(), progress)
            self.call_soon(lambda: self.raylet.send(m.SealObject(object_id)))
        return ["s", obj.kind, size, self.node_id, self.raylet_address, owner]

    async def _allocate(self, object_id: bytes, size: int, owner: str) -> int:
        self._drain()  # releases queued before this put go first: their space is reusable
        return await self.raylet.request(m.AllocateObject(object_id, size, owner))

    # -- get / wait -----------------------------------------------------------------------

    def get(self, refs: list[ObjectRef], timeout: float | None) -> list[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        entries = [self._entry_for(ref) for ref in refs]
        while True:
            if not self._wait_for(entries, len(entries), deadline, refs, stop_on_error=True):
                for ref, entry in zip(refs, entries):  # one failed: raise it, as Ray does
                    if entry.payload is not None and is_error(entry.payload):
                        self._value(ref, entry)
            try:
                return [self._value(ref, entry) for ref, entry in zip(refs, entries)]
            except exceptions.ObjectLostError as exc:  # its node died: re-run its task?
                if type(exc) is not exceptions.ObjectLostError:
                    raise
                why = self.run(self._rebuild(bytes.fromhex(exc.object_ref_hex)))
                if why is not None:
                    raise why from exc

    async def _rebuild(self, object_id: bytes) -> BaseException | None:
        """Have a lost object made again: by this process if it owns it (``_rerun``), else
        by its owner, and fetched anew from it once it is ready; or why it cannot be."""
        entry = self.refs.entries.get(object_id)
        if entry is None:
            return exceptions.ObjectLostError(object_id.hex())
        if entry.owned:
            return await self._rerun(object_id)
        try:
            conn = await self.peers.connect(entry.owner)
            answer = await conn.request(m.ReconstructObject(object_id))
        except Exception as exc:  # noqa: BLE001 - the owner is gone: so is the object
            logger.info("owner of %s unreachable: %s", object_id.hex(), exc)
            return exceptions.OwnerDiedError(object_id.hex(), entry.owner)
        if answer is not None:
            return self.read_payloads([(object_id, answer)])[0][1]
        with self.refs.lock:
            entry.payload = None
        entry.fetching = True  # asked again: the first answer pointed at the lost copy
        self._loop.create_task(self._fetch(object_id, entry))
        return None

    async def _reconstruct_object(self, conn: Connection, msg: m.ReconstructObject) -> Any:
        """A borrower lost every copy of an object this process owns."""
        entry = self.refs.entries.get(msg.object_id)
        if entry is not None and entry.payload is None:
            return None  # being made again already
        why = await self._rerun(msg.object_id)
        return None if why is None else error_payload(why)

    async def _rebuild_argument(self, spec: TaskSpec, object_id: bytes) -> None:
        """A task found an argument lost: have it made again, then let the task wait for it
        as it waits for any argument (or fail with why it cannot be)."""
        why = await self._rebuild(object_id)
        if why is not None:
            self._carry_out(self.tasks.handle(ArgumentsResolved(
                spec.task_id, "rebuild", error_payload(why))))
            return
        self.events.task(spec.task_id, "PENDING_ARGS_AVAIL", {
            "placement_reason": f"waiting for {object_id.hex()[:8]} to be made again: "
                                "every copy was lost"})
        self._await_arguments(spec)

    async def _rerun(self, object_id: bytes, dead: set[bytes] | None = None,
                     ) -> BaseException | None:
        """Lineage reconstruction: run again the task that made a lost object this process
        owns (its shared-memory outputs wait for the new run), after the arguments it needs
        that were lost with it (``dead``: the nodes gone); or why it cannot be."""
        entry = self.refs.entries.get(object_id)
        spec = entry.spec if entry is not None and entry.owned else None
        if spec is None:
            return exceptions.ObjectReconstructionFailedError(object_id.hex())
        if spec.task_id in self.tasks:
            return None  # already running again for another reader
        outcome = self.lineage.rerun(spec, object_id)
        if isinstance(outcome, BaseException):
            return outcome
        if dead is None:
            dead = {n["node_id"] for n in await self.gcs.request(m.GetNodes())
                    if not n["alive"]}
        for arg_id, _ in spec.arg_refs:  # lost arguments first (the resolver waits for them)
            arg = self.refs.entries.get(arg_id)
            if arg is not None and arg.owned and arg.spec is not None \
                    and arg.payload is not None and arg.payload[0] == "s" \
                    and arg.payload[3] in dead:
                why = await self._rerun(arg_id, dead)
                if why is not None:
                    return why
        with self.refs.lock:
            for index in range(spec.num_returns):
                output = self.refs.entries.get(object_id_for(spec.task_id, index + 1))
                if output is not None and output.payload is not None \
                        and output.payload[0] == "s":
                    output.payload = None
        spec.attempt += 1
        self.refs.add_submitted(outcome)
        self.events.task(spec.task_id, "PENDING_ARGS_AVAIL", {
            "attempt_number": spec.attempt,
            "placement_reason": f"reconstructing {object_id.hex()[:8]}: every copy was lost"})
        self._resolve(spec, outcome)
        return None

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None,
             ids: list[bytes] | None = None) -> tuple[list[ObjectRef], list[ObjectRef]]:
        """``ids``: the refs' object ids, when the caller has them already."""
        deadline = None if timeout is None else time.monotonic() + timeout
        entries = list(map(self.refs.entries.get, ids or map(_object_id, refs)))
        if None in entries or None in map(_payload, entries):
            entries = [self._entry_for(ref) for ref in refs]  # errors, fetches of borrows
            try:
                self._wait_for(entries, num_returns, deadline, refs)
            except exceptions.GetTimeoutError:
                pass
        elif num_returns == len(refs):  # all ready: the common case of a finished batch
            return list(refs), []
        ready, not_ready = [], []
        for ref, entry in zip(refs, entries):
            if entry.payload is not None and len(ready) < num_returns:
                ready.append(ref)
            else:
                not_ready.append(ref)
        return ready, not_ready

    def _entry_for(self, ref: ObjectRef) -> ObjectEntry:
        entry = self.refs.entries.get(ref._id)
        if entry is None:
            raise exceptions.ReferenceCountingAssertionError(ref._id.hex(), ref._owner)
        if not entry.owned and entry.payload is None and not entry.fetching:
            entry.fetching = True
            object_id = ref._id
            self.call_soon(lambda: self._loop.create_task(self._fetch(object_id, entry)))
        return entry

    def _wait_for(self, entries: list[ObjectEntry], count: int, deadline: float | None,
                  refs: list[ObjectRef], stop_on_error: bool = False) -> bool:
        """Block until ``count`` entries are ready; GetTimeoutError at the deadline.

        With ``stop_on_error`` it returns False as soon as one entry holds an error. A task
        waiting here gives its CPUs back meanwhile.
        """
        blocked = self.current_task is not None
        remaining = None if deadline is None else deadline - time.monotonic()
        ready = self.memory_store.wait(
            entries, count, remaining, stop_on_error=stop_on_error,
            on_block=(lambda: self.call_soon(lambda: self.raylet.send(m.NotifyBlocked())))
            if blocked else None,
            on_unblock=(lambda: self.call_soon(lambda: self.raylet.send(m.NotifyUnblocked())))
            if blocked else None)
        if ready is not None:
            return ready
        late = [i for i, e in enumerate(entries) if e.payload is None]
        raise exceptions.GetTimeoutError(
            f"Get timed out: {len(late)} of {len(entries)} object(s) not ready "
            f"(first: {refs[late[0]]})."
        )

    def _value(self, ref: ObjectRef, entry: ObjectEntry) -> Any:
        kind, value = self.read_payload(ref._id, entry.payload)
        if kind == KIND_ERROR:
            if isinstance(value, exceptions.RayTaskError):
                raise value.as_instanceof_cause()
            raise value
        return value

    def read_payload(self, object_id: bytes, payload: list) -> tuple[int, Any]:
        """Deserialize a payload; a shared-memory one is a zero-copy, pinned view."""
        if payload[0] == "i":
            return deserialize_inline(payload[1])
        return self.read_payloads([(object_id, payload)])[0]

    def read_payloads(self, items: list[tuple[bytes, list]]) -> list[tuple[int, Any]]:
        """Deserialize several payloads, asking the raylet once for all the shared-memory ones
        (it pins them for this process before it answers where they are)."""
        located: dict[bytes, list | None] = {}
        stored = []
        for object_id, payload in items:
            if payload[0] == "s":
                held = self.pins.take(object_id) if payload[3] == self.node_id else None
                if held is not None:
                    located[object_id] = held  # pinned already: no round trip
                else:
                    stored.append((object_id, payload))
        if stored:
            for (object_id, _), at in zip(stored, self._locate_reporting(stored)):
                located[object_id] = at
                self._hold(object_id, at)
        return [deserialize_inline(payload[1]) if payload[0] == "i"
                else self._view(object_id, payload, located[object_id])
                for object_id, payload in items]

    def _locate_reporting(self, stored: list[tuple[bytes, list]]) -> list:
        """``_locate`` from the caller's thread; while a large object is pulled from another
        node its progress goes to the front end's bar (``_context.copy_progress``)."""
        progress = _context.copy_progress
        remote = [object_id for object_id, p in stored
                  if p[3] != self.node_id and p[2] >= LARGE_PULL_BYTES]
        if not remote:  # the hot path: one round trip to this node's raylet, no task
            return self._ask_raylet(self._locate_message(stored))
        located = asyncio.run_coroutine_threadsafe(self._locate(stored), self._loop)
        if progress is None:
            return located.result()
        def report(finished: bool) -> None:
            for object_id in remote:
                seen = self.pull_progress.pop(object_id, None) if finished else \
                    self.pull_progress.get(object_id)
                if seen is not None:
                    done, total, source = seen
                    progress(total if finished else done, total,
                             f"pulling {total / 1e9:.1f} GB from {source}")

        while True:
            try:
                where = located.result(timeout=PROGRESS_EVERY_S)
            except concurrent.futures.TimeoutError:
                report(False)
                continue
            report(True)
            return where

    def _pull_progressed(self, conn: Connection, msg: m.PullProgress) -> None:
        if len(self.pull_progress) < MAX_PULLS_SHOWN or msg.object_id in self.pull_progress:
            self.pull_progress[msg.object_id] = (msg.done, msg.total, msg.source)

    async def _locate(self, stored: list[tuple[bytes, list]]) -> list:
        """Ask this node's raylet where objects are (it pulls those held by other nodes)."""
        self._drain()  # this thread's earlier seals and releases go first
        return await self.raylet.request(self._locate_message(stored))

    def _locate_message(self, stored: list[tuple[bytes, list]]) -> m.GetObjects:
        sources = [None if p[3] == self.node_id else pull_source(
            self.directory.share(object_id, p), self.raylet_address) for object_id, p in stored]
        return m.GetObjects([object_id for object_id, _ in stored],
                            sources if any(sources) else None)

    def _ask_raylet(self, message: m.Message) -> Any:
        """A request to this node's raylet from the caller's thread, in order after what this
        thread queued before (seals, releases), with no task or future of the loop's own."""
        done = threading.Lock()
        done.acquire()
        answer: list = []

        def answered(fut: asyncio.Future) -> None:
            answer.append(fut)
            done.release()

        self.call_soon(lambda: self.raylet.request(message).add_done_callback(answered))
        done.acquire()
        return answer[0].result()

    def _hold(self, object_id: bytes, where: list | None) -> None:
        """Keep the pin the raylet took for this read (one pin per object per process)."""
        if where is not None and not self.pins.add(object_id, where):
            self.call_soon(lambda: self.raylet.send(m.UnpinObjects([object_id])))

    def _view(self, object_id: bytes, payload: list, where: list | None) -> tuple[int, Any]:
        """A pinned, zero-copy view of an object the raylet has located."""
        if where is None:  # freed, or its node (and so its only copy) is gone
            raise exceptions.ObjectLostError(object_id.hex())
        offset, size = where

        def released() -> None:  # from a finalizer, on any thread: no lock here
            if not self._closed:
                self.call_soon(lambda: self._view_released(object_id))

        return deserialize_view(self.arena.read_view(offset, size, on_release=released))

    def _view_released(self, object_id: bytes) -> None:
        generation = self.pins.released(object_id)
        if generation is not None:
            self._loop.call_later(PIN_GRACE_S, self._expire_pin, object_id, generation)

    def _expire_pin(self, object_id: bytes, generation: int) -> None:
        if self.pins.expire(object_id, generation) and not self._closed:
            self.raylet.send(m.UnpinObjects([object_id]))

    async def _fetch(self, object_id: bytes, entry: ObjectEntry) -> None:
        """Ask a borrowed object's owner for it; the reply comes once it is ready."""
        try:
            conn = await self.peers.connect(entry.owner)
            payload = await conn.request(m.GetObjectStatus(object_id))
        except exceptions.RayError as exc:
            payload = error_payload(exc)
        except Exception as exc:
            logger.info("owner of %s unreachable: %s", object_id.hex(), exc)
            payload = error_payload(exceptions.OwnerDiedError(object_id.hex(), entry.owner))
        self._set_ready(object_id, entry, payload)

    def _get_object_status(self, conn: Connection, msg: m.GetObjectStatus) -> Any:
        entry = self.refs.entries.get(msg.object_id)
        if entry is None:
            return error_payload(exceptions.ReferenceCountingAssertionError(
                msg.object_id.hex(), self.address))
        if entry.payload is not None:
            return self.directory.share(msg.object_id, entry.payload)
        fut = self._loop.create_future()
        entry.callbacks.append(lambda e: fut.done() or fut.set_result(e.payload))
        return fut

    def value_future(self, ref: ObjectRef) -> concurrent.futures.Future:
        """A future for one ref's value (``ObjectRef.future()`` and ``await ref``)."""
        out: concurrent.futures.Future = concurrent.futures.Future()
        entry = self._entry_for(ref)

        def resolve(e: ObjectEntry) -> None:
            if e.payload[0] == "s":  # on the I/O thread: ask the raylet without blocking it
                self._loop.create_task(resolve_stored(e.payload))
                return
            try:
                out.set_result(self._value(ref, e))
            except BaseException as exc:
                out.set_exception(exc)

        async def resolve_stored(payload: list) -> None:
            try:
                where = self.pins.take(ref._id) if payload[3] == self.node_id else None
                if where is None:
                    where = (await self._locate([(ref._id, payload)]))[0]
                    self._hold(ref._id, where)
                out.set_result(self._view(ref._id, payload, where)[1])
            except BaseException as exc:
                out.set_exception(exc)

        def attach() -> None:
            if entry.payload is not None:
                resolve(entry)
            else:
                entry.callbacks.append(resolve)

        self.call_soon(attach)
        return out

    def know_values(self, pairs: list[tuple[bytes, list]]) -> None:
        """Values this process was handed (a task's resolved arguments) for borrowed refs it
        holds without one: a ``get`` of those needs no round trip to their owner, and a task
        doing it keeps its CPU (in Ray the object is in the local store already)."""
        entries = self.refs.entries
        for object_id, payload in pairs:
            entry = entries.get(object_id)
            if entry is not None and not entry.owned and entry.payload is None \
                    and not entry.fetching:
                self.memory_store.put(entry, payload)

    def _set_ready(self, object_id: bytes, entry: ObjectEntry, payload: list) -> None:
        self.memory_store.put(entry, payload)
        if self.resolver.is_awaited(object_id):
            for task_id in self.resolver.ready(object_id):
                spec = self.tasks.spec(task_id)
                if spec is not None:
                    self._dispatch(spec)

    # -- submission -----------------------------------------------------------------------

    def submit_task(self, function_id: bytes, name: str, args: tuple, kwargs: dict, *,
                    num_returns: int, resources: dict, max_retries: int,
                    retry_exceptions: bool, task_name: str | None = None,
                    actor_id: bytes = b"", method: str = "", actor_options: dict | None = None,
                    holds: list[bytes] = (), strategy: list | None = None) -> list[ObjectRef]:
        """Submit a task, an actor's creation (``actor_id``) or an actor call (and ``method``).

        ``holds``: objects the task keeps alive until it finishes (an actor's handle ref).
        """
        blob, arg_refs, contained = self._serialize_args(name, args, kwargs)
        task_id = self.ids.task_id()
        parent = self.current_task
        spec = TaskSpec(
            task_id, self.job_id if parent is None else parent.job_id, function_id,
            task_name or name, blob, arg_refs, num_returns, self.address,
            DRIVER_TASK_ID if parent is None else parent.task_id,
            submission_tag.get() if parent is None else parent.tag,
            resources, max_retries, retry_exceptions,
            actor_id=actor_id, method=method, actor_options=actor_options,
            namespace=self.namespace, strategy=strategy,
        )
        refs = []
        for index in range(1, num_returns + 1):
            object_id = object_id_for(task_id, index)
            self.refs.create_owned(object_id, spec=spec)
            refs.append(ObjectRef(object_id, self.address))
        submitted = [r[0] for r in arg_refs] + [r._id for r in contained] + list(holds)
        self.refs.add_submitted(submitted)
        self.events.task(task_id, "PENDING_ARGS_AVAIL", {
            "name": spec.name, "func_or_class_name": name, "job_id": spec.job_id,
            "parent_task_id": spec.parent_task_id.hex(), "tag": spec.tag,
            "args": [r[0].hex() for r in arg_refs],
            "returns": [r.hex() for r in refs], "actor_id": actor_id.hex() or None,
            "required_resources": resources, "owner": self.address, "type": spec.kind,
        })
        self.call_soon(lambda: self._resolve(spec, submitted))
        return refs

    def cancel(self, ref: ObjectRef, *, force: bool, recursive: bool) -> None:
        """Cancel the task that makes ``ref`` (see ``cellfleet.cancel``)."""
        self.call_soon(lambda: self._cancel(ref._id[:16], force, recursive))

    def _cancel(self, task_id: bytes, force: bool, recursive: bool) -> None:
        self._carry_out(self.tasks.handle(CancelRequested(task_id, "cancel", recursive, force)))

    def cancel_children(self, parent_task_id: bytes) -> None:
        """Cancel (recursively) every pending task submitted by ``parent_task_id``."""
        def cancel_all() -> None:
            for child in self.tasks.specs():
                if child.parent_task_id == parent_task_id:
                    self._cancel(child.task_id, False, True)
        self.call_soon(cancel_all)

    def _serialize_args(self, name: str, args: tuple, kwargs: dict) -> tuple[bytes, list, list]:
        if not args and not kwargs:
            return b"", [], []
        arg_refs: list[list] = []

        def slot(value: Any) -> Any:
            if isinstance(value, ObjectRef):
                arg_refs.append([value._id, value._owner])
                return ArgSlot(len(arg_refs) - 1)
            return value

        slotted = (tuple(slot(a) for a in args), {k: slot(v) for k, v in kwargs.items()})
        try:
            obj = serialize(slotted)  # large buffers out of band: sized without a copy
        except Exception as exc:
            named = [(f"#{i} ({type(a).__name__})", a) for i, a in enumerate(args)]
            named += [(f"{k!r} ({type(v).__name__})", v) for k, v in kwargs.items()]
            bad = find_unserializable(named)
            which = f"argument {bad[0]}" if bad else "the arguments"
            raise TypeError(
                f"Could not serialize {which} of {name}(): {bad[1] if bad else exc}. "
                "Arguments travel to another process: pass picklable values, or create the "
                "object inside the task."
            ) from exc
        if obj.size > INLINE_THRESHOLD:
            # Large arguments go into the object store once (one copy) and travel by reference.
            args = tuple(self._put_if_large(a) for a in args)
            kwargs = {k: self._put_if_large(v) for k, v in kwargs.items()}
            arg_refs.clear()
            slotted = (tuple(slot(a) for a in args), {k: slot(v) for k, v in kwargs.items()})
            obj = serialize(slotted, out_of_band=False)
        elif obj.buffers:
            obj = serialize(slotted, out_of_band=False)  # small: the spec carries one blob
        return obj.pickled, arg_refs, obj.contained_refs

    def _put_if_large(self, value: Any) -> Any:
        if isinstance(value, ObjectRef):
            return value
        obj = serialize(value)
        return self._put_serialized(obj) if obj.size > INLINE_THRESHOLD // 4 else value

    def _resolve(self, spec: TaskSpec, submitted: list[bytes]) -> None:
        """Wait (on the I/O thread) for top-level arguments, then queue the task."""
        task_id = spec.task_id
        self.tasks.handle(TaskSubmitted(task_id, "submit", spec, submitted))
        if spec.method:
            self.actor_submitter.enqueue(spec)  # calls keep their order from here on
        self._await_arguments(spec)

    def _await_arguments(self, spec: TaskSpec) -> None:
        """Dispatch the task once its top-level arguments are ready (fetching borrowed
        ones from their owners)."""
        task_id = spec.task_id
        entries = self.refs.entries
        waiting = []
        for object_id, _ in spec.arg_refs:
            entry = entries.get(object_id)
            if entry is not None and entry.payload is None:
                waiting.append(object_id)
                if not entry.owned and not entry.fetching:
                    entry.fetching = True
                    self._loop.create_task(self._fetch(object_id, entry))
        if self.resolver.wait_for(task_id, waiting):
            self._dispatch(spec)

    def _dispatch(self, spec: TaskSpec) -> None:
        """Every argument is ready: the task manager decides whether the task goes."""
        error = None
        resolved = []
        entries = self.refs.entries
        for object_id, owner in spec.arg_refs:
            entry = entries.get(object_id)
            if entry is None:
                error = error_payload(exceptions.ObjectLostError(object_id.hex(), owner))
                break
            if is_error(entry.payload):
                error = entry.payload  # failures propagate downstream
                break
            resolved.append(self.directory.share(object_id, entry.payload))
        spec.resolved = resolved
        if error is not None and spec.method:
            self.actor_submitter.drop(spec)  # a call that cannot run leaves the actor's line
        self._carry_out(self.tasks.handle(ArgumentsResolved(spec.task_id, "args", error)))

    def _carry_out(self, instructions: list) -> None:
        """Do what the task manager decided."""
        for instruction in instructions:
            spec = instruction.spec
            kind = type(instruction)
            if kind is Complete:
                error = instruction.error
                text = ""
                if isinstance(error, BaseException):
                    text = f"{type(error).__name__}: {error}"
                    error = error_payload(error)
                self._finish(spec, instruction.result, error, instruction.submitted, text)
            elif kind is Schedule:
                self.events.task(spec.task_id, "PENDING_NODE_ASSIGNMENT")
                if spec.method:
                    self.actor_submitter.ready(spec)
                elif spec.actor_id:
                    options = spec.actor_options
                    self.actor_submitter.create(
                        spec, "detached_actor" if options.get("detached") else "actor",
                        options["run_resources"])
                else:
                    self.submitter.submit(spec)
            elif kind is Retry:
                self.events.task(spec.task_id, "PENDING_NODE_ASSIGNMENT",
                                 {"attempt_number": spec.attempt})
                self.submitter.submit(spec)
            elif kind is Cancel:
                self._cancel_at(spec, instruction.force, instruction.recursive)
            elif kind is RebuildArgument:
                self._loop.create_task(self._rebuild_argument(spec, instruction.object_id))

    def _cancel_at(self, spec: TaskSpec, force: bool, recursive: bool) -> None:
        """Take a cancelled task out of its queue, or tell its worker to stop it."""
        task_id = spec.task_id
        if spec.actor_id:
            if self.actor_submitter.drop(spec):
                self._carry_out(self.tasks.handle(Dequeued(task_id, "cancel")))
                return
            conn = self.actor_submitter.connection_of(spec)
        else:
            if self.submitter.cancel_queued(task_id) is not None:
                self._carry_out(self.tasks.handle(Dequeued(task_id, "cancel")))
                return
            worker = self.submitter.workers_by_task.get(task_id)
            conn = worker.conn if worker is not None else None
        if conn is not None:
            conn.send(m.CancelTask(task_id, force, recursive))
        # otherwise its arguments are pending: their arrival completes it as cancelled

    def task_pushed(self, spec: TaskSpec, node_id: bytes, worker_id: bytes,
                    placement: str = "") -> None:
        self.events.task(spec.task_id, "SUBMITTED_TO_WORKER", {
            "node_id": node_id.hex(), "worker_id": worker_id.hex(),
            "attempt_number": spec.attempt, "placement_reason": placement,
        })

    def fail_task(self, spec: TaskSpec, error: BaseException) -> None:
        """End a task with ``error`` as the value of all its returns."""
        self._carry_out(self.tasks.handle(SchedulingFailed(spec.task_id, "failed", error)))

    def _task_pushed(self, spec: TaskSpec, worker: LeasedWorker) -> None:
        self.task_pushed(spec, worker.node_id, worker.worker_id, worker.reason)

    def task_infeasible(self, spec: TaskSpec, reason: str) -> None:
        """No node fits the task yet: its record says why it waits (the views show it), and
        a task submitted from a notebook cell says so in that cell."""
        self.events.task(spec.task_id, "PENDING_NODE_ASSIGNMENT",
                         {"placement_reason": f"waiting: {reason}"})
        if spec.tag and self.log_handler is not None:
            self.log_handler([[spec.job_id, spec.tag, spec.task_id.hex(), spec.name,
                               os.getpid(), "stderr",
                               f"cannot be scheduled yet: {reason}. It waits until a node "
                               "that has them joins; interrupt the cell to cancel it."]])

    def _task_results(self, conn: Connection, msg: m.TaskResults) -> None:
        try:
            for items in msg.results:
                result = TaskResult.from_wire(items)
                spec = self.tasks.spec(result.task_id)
                if spec is None:
                    continue  # late: the task was completed (cancelled) already
                if spec.method:
                    self.actor_submitter.call_done(spec)
                elif spec.actor_id:
                    self.actor_submitter.creation_done(spec, result)
                else:
                    self.submitter.task_done(result.task_id, spec.function_id,
                                             result.end - result.start)
                self._carry_out(self.tasks.handle(ResultReceived(result.task_id, "result",
                                                                 result)))
        finally:
            self.submitter.pump_freed()  # the freed workers take more, one push each

    def _task_worker_lost(self, spec: TaskSpec, worker: LeasedWorker) -> None:
        self._carry_out(self.tasks.handle(WorkerLost(spec.task_id, "worker-lost")))

    def _task_failed_to_schedule(self, spec: TaskSpec, exc: BaseException) -> None:
        self._carry_out(self.tasks.handle(SchedulingFailed(spec.task_id, "lease", exc)))

    def _finish(self, spec: TaskSpec, result: TaskResult | None, error: list | None,
                submitted: list[bytes], error_text: str = "") -> None:
        """Record a task's outcome: fill its return objects and release its arguments
        (``error_text``: what ended a task that never ran, for its record)."""
        for index in range(spec.num_returns):
            object_id = object_id_for(spec.task_id, index + 1)
            payload = error if result is None else result.returns[index]
            entry = self.refs.entries.get(object_id)
            if entry is None:  # nobody holds the return any more
                if payload[0] == "s":
                    self._free_stored(object_id, payload)
                if result is not None and result.contained and result.contained[index]:
                    self._return_borrows(result.contained[index])
                continue
            if result is not None and result.contained and result.contained[index]:
                self.refs.set_contains(object_id, result.contained[index])
            self._set_ready(object_id, entry, payload)
        if result is not None:
            self.events.task(spec.task_id, "FINISHED" if result.ok else "FAILED", {
                "start_time": result.start, "end_time": result.end, "worker_pid": result.pid,
                "worker_id": result.worker_id.hex(), "node_id": result.node_id.hex(),
                "error_message": result.error_text or None,
                # bytes of each return: shared memory's size, or the inline pickle and buffers
                "return_sizes": [p[2] if p[0] == "s" else len(p[1][1]) + sum(map(len, p[1][2]))
                                 for p in result.returns[:spec.num_returns]],
            })
        else:
            self.events.task(spec.task_id, "FAILED", {
                "error_message": error_text or "an argument failed: see the error object"})
        if result is not None and result.ok:  # kept while outputs live, to re-run it
            stored = sum(1 for index, p in enumerate(result.returns[:spec.num_returns])
                         if p[0] == "s" and object_id_for(spec.task_id, index + 1)
                         in self.refs.entries)
            submitted = self.lineage.finished(spec, submitted, stored)
        if submitted:
            self.refs.remove_submitted(submitted)

    # -- reference counting hooks (I/O thread) -----------------------------------------

    def _on_free(self, object_id: bytes, entry: ObjectEntry) -> None:
        spec = entry.spec
        if (entry.owned and spec is not None and spec.actor_id and not spec.method
                and not spec.actor_options.get("detached")):
            # The last handle to an actor is gone: the actor goes too.
            self.actor_submitter.kill(spec.actor_id, exceptions.ActorDeathReason.OUT_OF_SCOPE)
        if entry.owned:
            stored = entry.payload is not None and entry.payload[0] == "s"
            if stored:
                self._free_stored(object_id, entry.payload)
                if spec is not None:  # the task's arguments go with its last stored output
                    released = self.lineage.output_freed(spec.task_id)
                    if released:
                        self.refs.remove_submitted(released)
            if stored or spec is None:  # the objects with a record: puts, and stored copies
                self.events.object(object_id, "FREED")
        else:
            self.peers.send(entry.owner, m.RemoveBorrowers([object_id], self.address))

    def _free_stored(self, object_id: bytes, payload: list) -> None:
        """Release an object's primary copy at the node that stores it."""
        if payload[3] == self.node_id:
            self.raylet.send(m.FreeObjects([object_id]))
        else:
            self.peers.send(payload[4], m.FreeObjects([object_id]))
        for address in self.directory.forget(object_id):  # the secondary copies
            self.peers.send(address, m.FreeObjects([object_id]))

    def _location_added(self, conn: Connection, msg: m.ObjectLocationAdded) -> None:
        """A raylet pulled a copy of an object this process owns (``object_directory``)."""
        entry = self.refs.entries.get(msg.object_id)
        live = entry is not None and entry.owned and entry.payload is not None \
            and entry.payload[0] == "s"
        for address in self.directory.added(msg.object_id, msg.node_id, msg.address, live):
            self.peers.send(address, m.FreeObjects([msg.object_id]))
        self._copies_changed([msg.object_id] if live else [])

    def _location_removed(self, conn: Connection, msg: m.ObjectLocationRemoved) -> None:
        self.directory.removed(msg.object_id, msg.address)
        self._copies_changed([msg.object_id] if msg.object_id in self.refs.entries else [])

    def _copies_changed(self, object_ids: list[bytes]) -> None:
        """The state API and the dashboard list each object's secondary copies."""
        for object_id in object_ids:
            self.events.object(object_id, "LOCATED", {"copies": self.directory.copies(object_id)})

    def _on_borrow(self, object_id: bytes, owner: str) -> None:
        self._register_borrow(owner, [object_id], self.address)

    def lend(self, refs: list, borrower: str) -> None:
        """Register ``borrower`` for refs this process passes on (results holding refs)."""
        for object_id, owner in refs:
            if owner == borrower:
                continue  # the ref goes back to its owner, who counts it locally
            if owner == self.address:
                self.refs.add_borrower([object_id], borrower)
            else:
                self.call_soon(lambda o=owner, i=object_id: self._register_borrow(
                    o, [i], borrower))

    def _return_borrows(self, refs: list) -> None:
        """Refs lent to this process inside a return nobody holds any more: give them back."""
        for object_id, owner in refs:
            if owner != self.address and object_id not in self.refs.entries:
                self.peers.send(owner, m.RemoveBorrowers([object_id], self.address))


_object_id = operator.attrgetter("_id")
_payload = operator.attrgetter("payload")


def print_logs(lines: list) -> None:
    """Default driver output of worker prints: ``(name pid=123) text``."""
    for _, _, _, name, pid, stream, text in lines:
        out = sys.stderr if stream == "stderr" else sys.stdout
        print(f"({name} pid={pid}) {text}", file=out)
