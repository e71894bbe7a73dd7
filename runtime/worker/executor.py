"""Running tasks: the worker's main thread takes pushed tasks in order and runs them.

The I/O thread receives ``PushTasks`` and ``DefineFunctions`` and only queues them; the main
thread unpickles functions and arguments, runs the task, stores its returns (inline or in the
node's arena) and queues the result. Results finished in a burst leave in one message.
"""

from __future__ import annotations

import os
import pickle
import queue
import socket
import time
import traceback
from collections import deque
from typing import Any

from .. import _messages as m
from .. import exceptions
from .._ids import object_id_for
from .._rpc import Connection
from .._serialization import KIND_ERROR, serialize
from ..core.core_worker import CoreWorker
from ..core.task_spec import ArgSlot, TaskResult, TaskSpec

__all__ = ["TaskExecutor"]


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

    # -- I/O thread -----------------------------------------------------------------------

    def define_functions(self, functions: list) -> None:
        for function_id, _name, blob in functions:
            self._blobs.setdefault(function_id, blob)

    def push(self, conn: Connection, tasks: list) -> None:
        for wire in tasks:
            self._tasks.put((conn, wire))

    def _send_results(self) -> None:
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
            self._results.append((conn, self.execute(TaskSpec.from_wire(wire)).to_wire()))
            if self.core.events.logs:  # what the task printed leaves before its result
                self.core._call_soon(self._flush_events)
            self.core._call_soon(self._send_results)

    def _flush_events(self) -> None:
        self.core.events.flush(self.core.gcs)

    def stop(self) -> None:
        self._tasks.put(None)

    def execute(self, spec: TaskSpec) -> TaskResult:
        core = self.core
        start = time.time()
        core.events.task(spec.task_id, "RUNNING", {
            "start_time": start, "worker_pid": self._pid, "node_id": core.node_id.hex(),
            "worker_id": core.worker_id.hex(),
        })
        core.current_task = spec
        ok, retryable, error_text = True, False, ""
        try:
            fn = self._function(spec.function_id)
            args, kwargs = self._arguments(spec)
            value = fn(*args, **kwargs)
            values = _split_returns(value, spec.num_returns, spec.name)
            payloads, contained = self._store_returns(spec, values)
        except Exception as exc:
            ok = False
            retryable = _retry_allowed(spec.retry_exceptions, exc)
            error = exceptions.RayTaskError(
                spec.name, _format_traceback(exc), _picklable_cause(exc), self._pid, self._ip
            )
            error_text = f"{type(exc).__name__}: {exc}"
            payload = ["i", serialize(error, KIND_ERROR).inline()]
            payloads, contained = [payload] * spec.num_returns, []
        finally:
            core.current_task = None
            for stream in self.streams:
                stream.flush()
        return TaskResult(spec.task_id, ok, payloads, contained, core.worker_id, core.node_id,
                          self._pid, start, time.time(), retryable, error_text)

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
        values = [
            self.core.read_payload(object_id, payload)[1]
            for (object_id, _), payload in zip(spec.arg_refs, spec.resolved)
        ]
        args = tuple(values[a.index] if type(a) is ArgSlot else a for a in args)
        kwargs = {k: values[v.index] if type(v) is ArgSlot else v for k, v in kwargs.items()}
        return args, kwargs

    def _store_returns(self, spec: TaskSpec, values: list) -> tuple[list, list]:
        payloads, contained = [], []
        for index, value in enumerate(values, start=1):
            try:
                obj = serialize(value)
            except Exception as exc:
                raise TypeError(
                    f"Could not serialize the return value of {spec.name}() "
                    f"({type(value).__name__}): {exc}"
                ) from exc
            payloads.append(self.core.store_payload(object_id_for(spec.task_id, index), obj,
                                                    spec.owner))
            refs = [[r._id, r._owner] for r in obj.contained_refs]
            if refs:
                self.core.lend(refs, spec.owner)
            contained.append(refs)
        return payloads, contained


def _split_returns(value: Any, num_returns: int, name: str) -> list:
    if num_returns == 1:
        return [value]
    if not isinstance(value, (tuple, list)) or len(value) != num_returns:
        raise ValueError(
            f"{name}() was declared with num_returns={num_returns} but returned "
            f"{type(value).__name__}"
            + (f" of length {len(value)}" if isinstance(value, (tuple, list)) else "")
        )
    return list(value)


def _retry_allowed(retry_exceptions: Any, exc: Exception) -> bool:
    if isinstance(retry_exceptions, list):
        return any(isinstance(exc, t) for t in retry_exceptions)
    return bool(retry_exceptions)


def _format_traceback(exc: BaseException) -> str:
    """The traceback from the task's own code on (the executor's frame left out)."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _picklable_cause(exc: Exception) -> Exception:
    try:
        pickle.loads(serialize(exc, out_of_band=False).pickled)
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc} (the original exception could not "
                            "be pickled)")
