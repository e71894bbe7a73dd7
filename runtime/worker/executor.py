"""Running tasks: the worker's main thread takes pushed tasks in order and runs them.

The I/O thread receives ``PushTasks`` and ``DefineFunctions`` and only queues them; the main
thread unpickles functions and arguments, runs the task, stores its returns (inline or in the
node's arena) and queues the result. Results finished in a burst leave in one message.

Every call gets a result: whatever the user's code raises, ``sys.exit()`` and exceptions whose
``__str__`` raises included, fails that call and leaves the worker, its actor and an async
actor's event loop running.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import inspect
import os
import pickle
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any

from .. import _messages as m
from .. import exceptions
from .._ids import object_id_for
from .._rpc import Connection
from .._serialization import KIND_ERROR, serialize
from ..actor import actor_method
from ..core.core_worker import CoreWorker
from ..core.task_spec import ArgSlot, TaskResult, TaskSpec

__all__ = ["TaskExecutor"]


class _ArgumentLost(Exception):
    """Every copy of one of a task's arguments was lost before the task could read it: the
    task does not run, and its owner rebuilds the argument and submits it again."""

    def __init__(self, object_id: bytes) -> None:
        super().__init__(object_id.hex())
        self.object_id = object_id


class TaskExecutor:
    """Executes tasks on the thread that calls ``run_forever``."""

    def __init__(self, core: CoreWorker) -> None:
        self.core = core
        self._blobs: dict[bytes, bytes] = {}
        self._functions: dict[bytes, Any] = {}
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._results: deque[tuple[Connection, list]] = deque()
        self._ip = socket.gethostbyname("localhost")
        self._pid = os.getpid()
        self.streams: tuple = ()
        self.actor: Any = None
        self._actor_loop: asyncio.AbstractEventLoop | None = None
        # A threaded actor's thread pools, an async actor's slots: one per concurrency group
        # (None: the default group, of max_concurrency), and the groups of its methods.
        self._actor_pools: dict[str | None, concurrent.futures.ThreadPoolExecutor] = {}
        self._async_calls: dict[bytes, concurrent.futures.Future] = {}
        self._actor_slots: dict[str | None, asyncio.Semaphore] = {}
        self._method_groups: dict[str, str] = {}
        self._cancelled: set[bytes] = set()
        # task id -> (owner connection, number of returns), until the task starts
        self._queued: dict[bytes, tuple[Connection, int]] = {}
        self._running_main: bytes | None = None  # task id running on the main thread
        self.gpu_ids: list[int] = []  # of the current lease, from the raylet
        self.actor_restarts = 0  # how many times this worker's actor was restarted before it
        self._cuda_visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # as the worker started
        self._interrupt: bytes | None = None
        self._exiting = False  # the actor called exit_actor()
        signal.signal(signal.SIGINT, self._on_sigint)

    # -- I/O thread -----------------------------------------------------------------------

    def define_functions(self, functions: list) -> None:
        for function_id, _name, blob in functions:
            self._blobs.setdefault(function_id, blob)

    def push(self, conn: Connection, tasks: list) -> None:
        if tasks:
            self.core.peers.inbound[tasks[0][7]] = conn  # the owner's address
        for wire in tasks:
            if self._actor_loop is not None:
                spec = TaskSpec.from_wire(wire)
                self._async_calls[spec.task_id] = asyncio.run_coroutine_threadsafe(
                    self._run_async(conn, spec), self._actor_loop)
            elif self._actor_pools:
                spec = TaskSpec.from_wire(wire)
                pool = self._actor_pools[self._method_groups.get(spec.method)]
                pool.submit(self._run_one, conn, spec)
            else:
                self._queued[wire[0]] = (conn, wire[6])
                self._tasks.put((conn, wire))

    def assign_gpus(self, gpu_ids: list[int]) -> None:
        """The GPUs of the lease about to start (the raylet says so before granting it): its
        tasks or actor see only those, through ``CUDA_VISIBLE_DEVICES``, as in Ray."""
        self.gpu_ids = list(gpu_ids)
        if gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_ids))
        elif self._cuda_visible is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = self._cuda_visible

    def kill(self, reason: str) -> None:
        """``kill()`` of this worker's actor: exit now."""
        os._exit(0)

    def cancel(self, task_id: bytes, force: bool, recursive: bool) -> None:
        """Cancel a queued or running task (I/O thread)."""
        if recursive:
            self.core.cancel_children(task_id)
        call = self._async_calls.get(task_id)
        if call is not None:
            self._actor_loop.call_soon_threadsafe(call.cancel)
            return
        if force:
            os._exit(1)  # the owner sees the worker go and fails the task as cancelled
        queued = self._queued.pop(task_id, None)
        if queued is not None:
            self._deliver_cancelled(task_id, *queued)
            return
        self._cancelled.add(task_id)
        if self._running_main == task_id:
            self._interrupt = task_id
            os.kill(self._pid, signal.SIGINT)

    def steal(self, task_ids: list[bytes]) -> list[bytes]:
        """Give back queued tasks that have not started (I/O thread): they will not run here."""
        return [task_id for task_id in task_ids if self._queued.pop(task_id, None) is not None]

    def _deliver_cancelled(self, task_id: bytes, conn: Connection, num_returns: int) -> None:
        """Answer a task that never started: it was cancelled in the queue."""
        error = exceptions.TaskCancelledError(task_id.hex())
        result = self._error_result(task_id, num_returns, error, "cancelled")
        self._results.append((conn, result.to_wire()))
        self._send_results()

    def _error_result(self, task_id: bytes, num_returns: int, error: BaseException,
                      text: str) -> TaskResult:
        """A result failing every return of a task with ``error``; no time ran."""
        payload = ["i", serialize(error, KIND_ERROR).inline()]
        now = time.time()
        return TaskResult(task_id, False, [payload] * num_returns, [], self.core.worker_id,
                          self.core.node_id, self._pid, now, now, False, text)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._interrupt is not None and self._interrupt == self._running_main:
            self._interrupt = None
            raise KeyboardInterrupt

    def _send_results(self) -> None:
        self.core.after_borrows(self._flush_results)

    def _flush_results(self) -> None:
        by_conn: dict[Connection, list] = {}
        results = self._results
        while results:
            conn, wire = results.popleft()
            by_conn.setdefault(conn, []).append(wire)
        for conn, wires in by_conn.items():
            conn.send(m.TaskResults(wires))

    # -- main thread ----------------------------------------------------------------------

    def run_forever(self) -> None:
        while True:
            item = self._tasks.get()
            if item is None:
                return
            conn, wire = item
            if self._queued.pop(wire[0], None) is None:
                continue  # cancelled while queued: already answered
            spec = TaskSpec.from_wire(wire)
            self._running_main = spec.task_id
            try:
                self._run_one(conn, spec)
            except KeyboardInterrupt:  # a cancel that came as the task ended
                pass
            finally:
                self._running_main = None

    def _run_one(self, conn: Connection, spec: TaskSpec) -> None:
        try:
            result = self.execute(spec)
        except BaseException as exc:  # noqa: BLE001 - the call fails, the worker lives on
            result = self._unreported(spec, exc)
        self._deliver(conn, result)

    async def _run_async(self, conn: Connection, spec: TaskSpec) -> None:
        try:
            async with self._actor_slots[self._method_groups.get(spec.method)]:
                result = await self.execute_async(spec)
        except BaseException as exc:  # noqa: BLE001 - the call fails, the loop lives on
            result = self._unreported(spec, exc)
        finally:
            self._async_calls.pop(spec.task_id, None)
        self._deliver(conn, result)

    def _deliver(self, conn: Connection, result: TaskResult) -> None:
        self._results.append((conn, result.to_wire()))
        self.core.events.ended(result.task_id)
        if self.core.events.logs:  # what the task printed leaves before its result
            self.core.call_soon(self._flush_events)
        self.core.call_soon(self._send_results)
        if self._exiting:
            self._exit_actor()

    def _exit_actor(self) -> None:
        """After ``exit_actor()``: fail the calls still queued, send every result, run the
        ``atexit`` handlers and exit."""
        error = exceptions.ActorDiedError(self.core.actor_id.hex(),
                                          exceptions.ActorDeathReason.INTENDED_EXIT)
        for task_id, (conn, num_returns) in list(self._queued.items()):
            result = self._error_result(task_id, num_returns, error, "exit_actor()")
            self._results.append((conn, result.to_wire()))

        async def send_all() -> None:
            self._send_results()
            conns = set(self.core.peers.inbound.values())
            deadline = time.monotonic() + EXIT_FLUSH_S
            while any(c.unsent_bytes for c in conns) and time.monotonic() < deadline:
                await asyncio.sleep(0.001)  # the results are being written to the owners

        try:
            self.core.run(send_all(), timeout=EXIT_FLUSH_S + 1)
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            atexit._run_exitfuncs()
            os._exit(0)

    def _flush_events(self) -> None:
        self.core.events.flush(self.core.gcs)

    def stop(self) -> None:
        self._tasks.put(None)

    def execute(self, spec: TaskSpec) -> TaskResult:
        """Run one task on this thread."""
        start = self._begin(spec)
        try:
            fn, args, kwargs = self._prepare(spec)
            value = fn(*args, **kwargs)
            if self._running_main == spec.task_id:
                self._running_main = None  # it returned: a cancel coming now is too late
            outcome = self._success(spec, value)
        except BaseException as exc:  # noqa: BLE001 - sys.exit() too fails only this call
            outcome = self._failure(spec, exc)
        finally:
            self._end()
        return self._result(spec, start, outcome)

    async def execute_async(self, spec: TaskSpec) -> TaskResult:
        """Run one call of an async actor on the actor's event loop."""
        start = self._begin(spec)
        try:
            fn, args, kwargs = self._prepare(spec)
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
            outcome = self._success(spec, value)
        except BaseException as exc:  # noqa: BLE001 - sys.exit() too fails only this call
            outcome = self._failure(spec, exc)
        finally:
            self._end()
        return self._result(spec, start, outcome)

    def _begin(self, spec: TaskSpec) -> float:
        start = time.time()
        self.core.events.task(spec.task_id, "RUNNING", {
            "start_time": start, "worker_pid": self._pid, "node_id": self.core.node_id.hex(),
            "worker_id": self.core.worker_id.hex(),
        })
        self.core.current_task = spec
        return start

    def _prepare(self, spec: TaskSpec) -> tuple[Any, tuple, dict]:
        if spec.task_id in self._cancelled:
            raise KeyboardInterrupt
        args, kwargs = self._arguments(spec)
        if spec.method:
            if self.actor is None:
                raise exceptions.RaySystemError("this worker hosts no actor")
            return actor_method(self.actor, spec.method), args, kwargs
        cls_or_fn = self._function(spec.function_id)
        if spec.actor_id:  # creation: the constructor runs, the worker becomes the actor
            return self._become_actor(spec, cls_or_fn), args, kwargs
        return cls_or_fn, args, kwargs

    def _become_actor(self, spec: TaskSpec, cls: type) -> Any:
        def construct(*args: Any, **kwargs: Any) -> None:
            options = spec.actor_options or {}
            # The constructor knows its actor's id and whether it is a restart, as in Ray.
            self.core.actor_id = spec.actor_id
            self.actor_restarts = int(options.get("restarts") or 0)
            try:
                self.actor = cls(*args, **kwargs)
            except BaseException:
                self.core.actor_id, self.actor_restarts = b"", 0
                raise
            self.core.actor_resources = options.get("run_resources") or {}
            groups = {None: int(options.get("max_concurrency")
                                or (1000 if options.get("is_async") else 1)),
                      **(options.get("concurrency_groups") or {})}
            self._method_groups = dict(options.get("method_groups") or {})
            if options.get("is_async"):
                self._start_actor_loop(groups)
            elif len(groups) > 1 or groups[None] > 1:
                self._actor_pools = {
                    group: concurrent.futures.ThreadPoolExecutor(
                        size, thread_name_prefix=f"actor-{group}" if group else "actor")
                    for group, size in groups.items()}

        return construct

    def _start_actor_loop(self, groups: dict[str | None, int]) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._actor_slots = {group: asyncio.Semaphore(size)
                                 for group, size in groups.items()}
            self._actor_loop = loop
            ready.set()
            while True:  # the loop serves the actor for the life of the worker
                try:
                    loop.run_forever()  # returns if the actor's code calls loop.stop()
                except (SystemExit, KeyboardInterrupt) as exc:
                    # asyncio lets these leave run_forever: a task the actor started itself
                    # exited. Only that task ends; the calls on the loop go on.
                    print(f"a task of the actor raised {_describe(exc)}; the actor keeps "
                          "running", file=sys.stderr)

        threading.Thread(target=run, name="actor-loop", daemon=True).start()
        ready.wait()

    def _end(self) -> None:
        for stream in self.streams:  # a last line without a newline still belongs to the task
            stream.flush()
        self.core.current_task = None

    def _success(self, spec: TaskSpec, value: Any) -> tuple:
        values = _split_returns(value, spec.num_returns, spec.name)
        payloads, contained = self._store_returns(spec, values)
        return True, False, "", payloads, contained, b""

    def _failure(self, spec: TaskSpec, exc: BaseException) -> tuple:
        if isinstance(exc, exceptions.ActorExitRequest) and self.actor is not None:
            self._exiting = True  # exit_actor(): this call's result goes, then the worker
            error = exceptions.ActorDiedError(spec.actor_id.hex(),
                                              exceptions.ActorDeathReason.INTENDED_EXIT)
            payload = ["i", serialize(error, KIND_ERROR).inline()]
            return False, False, "exit_actor()", [payload] * spec.num_returns, [], b""
        if isinstance(exc, _ArgumentLost):  # the owner rebuilds the argument and runs it again
            error = exc.__cause__
            payload = ["i", serialize(error, KIND_ERROR).inline()]
            return (False, False, str(error), [payload] * spec.num_returns, [],
                    exc.object_id)
        if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
            self._cancelled.discard(spec.task_id)
            error: BaseException = exceptions.TaskCancelledError(spec.task_id.hex())
            retryable = False
        else:
            retryable = isinstance(exc, Exception) and _retry_allowed(spec.retry_exceptions, exc)
            text = _format_traceback(exc)
            if isinstance(exc, SystemExit):
                text += _SYSTEM_EXIT_NOTE
            error = exceptions.RayTaskError(
                spec.name, text, _picklable_cause(exc), self._pid, self._ip)
        payload = ["i", serialize(error, KIND_ERROR).inline()]
        return False, retryable, _describe(error if isinstance(
            error, exceptions.TaskCancelledError) else exc), [payload] * spec.num_returns, [], b""

    def _unreported(self, spec: TaskSpec, exc: BaseException) -> TaskResult:
        """The result of a call whose own outcome was lost: it was cancelled outside its code
        (as it ended, or waiting for a slot of an async actor), or its error could not be
        reported."""
        if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
            error: BaseException = exceptions.TaskCancelledError(spec.task_id.hex())
            text = "cancelled"
        else:
            text = f"{spec.name}() failed and its error could not be reported: {_describe(exc)}"
            error = exceptions.RaySystemError(text)
        return self._error_result(spec.task_id, spec.num_returns, error, text)

    def _result(self, spec: TaskSpec, start: float, outcome: tuple) -> TaskResult:
        ok, retryable, error_text, payloads, contained, lost = outcome
        core = self.core
        return TaskResult(spec.task_id, ok, payloads, contained, core.worker_id, core.node_id,
                          self._pid, start, time.time(), retryable, error_text, lost)

    def _function(self, function_id: bytes) -> Any:
        fn = self._functions.get(function_id)
        if fn is None:
            blob = self._blobs.get(function_id)
            if blob is None:
                blob = self.core.run(self.core.gcs.request(m.GetFunction(function_id)))
                if blob is None:
                    raise exceptions.RaySystemError(
                        f"function {function_id.hex()} was never exported to the cluster")
            fn = self._functions[function_id] = pickle.loads(blob)
        return fn

    def _arguments(self, spec: TaskSpec) -> tuple[tuple, dict]:
        if not spec.args:
            return (), {}
        args, kwargs = pickle.loads(spec.args)
        if not spec.arg_refs:
            return args, kwargs
        resolved = [(object_id, payload)
                    for (object_id, _), payload in zip(spec.arg_refs, spec.resolved)]
        self.core.know_values(resolved)  # the same refs nested in the arguments
        try:
            values = [value for _, value in self.core.read_payloads(resolved)]
        except exceptions.ObjectLostError as exc:
            if type(exc) is exceptions.ObjectLostError and not spec.actor_id:
                raise _ArgumentLost(bytes.fromhex(exc.object_ref_hex)) from exc
            raise
        args = tuple(values[a.index] if type(a) is ArgSlot else a for a in args)
        kwargs = {k: values[v.index] if type(v) is ArgSlot else v for k, v in kwargs.items()}
        return args, kwargs

    def _store_returns(self, spec: TaskSpec, values: list) -> tuple[list, list]:
        payloads, contained = [], []
        for index, value in enumerate(values, start=1):
            try:
                obj = serialize(value)
            except Exception as exc:
                self._release_stored(spec, payloads)
                raise TypeError(
                    f"Could not serialize the return value of {spec.name}() "
                    f"({type(value).__name__}): {_text(exc)}"
                ) from exc
            payloads.append(self.core.store_payload(object_id_for(spec.task_id, index), obj,
                                                    spec.owner))
            refs = [[r._id, r._owner] for r in obj.contained_refs]
            if refs:
                self.core.lend(refs, spec.owner)
            contained.append(refs)
        return payloads, contained


    def _release_stored(self, spec: TaskSpec, payloads: list) -> None:
        """Free the returns already written to the arena when a later one fails."""
        stored = [object_id_for(spec.task_id, i) for i, p in enumerate(payloads, start=1)
                  if p[0] == "s"]
        if stored:
            self.core.call_soon(lambda: self.core.raylet.send(m.FreeObjects(stored)))


def _split_returns(value: Any, num_returns: int, name: str) -> list:
    if num_returns == 1:
        return [value]
    if num_returns == 0:
        return []
    if not isinstance(value, (tuple, list)) or len(value) != num_returns:
        raise ValueError(
            f"{name}() was declared with num_returns={num_returns} but returned "
            f"{type(value).__name__}"
            + (f" of length {len(value)}" if isinstance(value, (tuple, list)) else "")
        )
    return list(value)


def _retry_allowed(retry_exceptions: bool | bytes, exc: Exception) -> bool:
    if isinstance(retry_exceptions, bytes):
        return isinstance(exc, pickle.loads(retry_exceptions))
    return bool(retry_exceptions)


def _format_traceback(exc: BaseException) -> str:
    """The traceback from the task's own code on (the executor's frames left out)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


EXIT_FLUSH_S = 5.0  # how long an exiting actor waits for its results to leave

_SYSTEM_EXIT_NOTE = (
    "\nsys.exit() in a remote function or actor method fails only that call: the worker and "
    "its actor keep running. To end an actor, use kill(actor)."
)


def _text(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder when the exception's ``__str__`` raises."""
    try:
        return str(exc)
    except BaseException:  # noqa: BLE001 - user code: anything may come out of __str__
        return f"<{type(exc).__name__}.__str__ raised>"


def _describe(exc: BaseException) -> str:
    text = _text(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _picklable_cause(exc: BaseException) -> BaseException:
    try:
        pickle.loads(serialize(exc, out_of_band=False).pickled)
        return exc
    except BaseException:  # noqa: BLE001 - __reduce__ and __init__ are user code
        return RuntimeError(f"{_describe(exc)} (the original exception could not be pickled)")
