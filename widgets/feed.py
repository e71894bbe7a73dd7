"""Task records pushed from the GCS to this process's views.

One ``TaskFeed`` per process (``feed()``): while at least one view listens, a thread with its
own event loop holds a connection to the cluster's GCS subscribed to the ``tasks`` channel (the
GCS pushes, every second, the current counts of the groups that changed and a bounded sample
of the changed records: the newest of each job, and the next state of every task it pushed
unfinished). A new view first reads the counts and the newest records once (``ListTaskGroups``,
``ListTaskChanges``; a cell's view only that cell's), then lives on what is pushed. The
feed's work per second is bounded by the sample, not by the task rate, so a view open during a
burst of thousands of tasks a second leaves the driver's interpreter to the driver.
An engine without that channel (the kernel's Ray backend) installs a ``PollingFeed`` over its
``StateSource`` with ``use_feed``: it reads the changes once a second, the views stay the same.
Each listener's ``refresh`` is called at most ``interval`` seconds apart while its model
changes: nothing polls the GCS per frame, and with no view open there is no connection.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from cellfleet import _context
from cellfleet import _messages as m

from .model import GraphModel

__all__ = ["NoClusterError", "PollingFeed", "TaskFeed", "current_address", "feed",
           "label_cell", "use_feed"]

POLL_ANSWER_S = 60.0  # a polled engine's state API on a busy cluster can take this long
HISTORY_LIMIT = 2_000  # the newest records a new view reads (its counts come from the groups)
CONNECT_TIMEOUT_S = 5.0
IDLE_S = 5.0  # the connection closes this long after the last view went
DELIVER_SLICE = 200  # records merged before letting the other threads run
MAX_CELL_LABELS = 10_000
CELL_LABELS: dict[str, str] = {}  # a cell's tag (msg_id) -> "In [3]", for the details panel


def label_cell(tag: str, label: str) -> None:
    """Name the cell whose tasks carry ``tag`` (the kernel does, as each cell starts)."""
    CELL_LABELS[tag] = label
    while len(CELL_LABELS) > MAX_CELL_LABELS:
        del CELL_LABELS[next(iter(CELL_LABELS))]


class NoClusterError(RuntimeError):
    """A view was asked for with no cluster to watch."""


class _Listener:
    __slots__ = ("model", "refresh", "interval", "tick", "seen", "due", "lock")

    def __init__(self, model: GraphModel, refresh: Callable[[], None], interval: float,
                 tick: bool) -> None:
        self.model = model
        self.refresh = refresh
        self.interval = interval
        self.tick = tick
        self.seen = -1
        self.due = 0.0
        self.lock = threading.Lock()  # held while the model changes or is read


class TaskFeed:
    """The GCS's task records, fanned out to listeners' models (see the module docstring)."""

    def __init__(self, address: str, token: bytes) -> None:
        self.address = address
        self.token = token
        self._listeners: list[_Listener] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None

    # -- listeners --------------------------------------------------------------------------

    def add(self, model: GraphModel, refresh: Callable[[], None], *,
            interval: float = 0.5, tick: bool = False, history: bool = True) -> _Listener:
        """Feed ``model`` (its tasks so far unless not ``history``, then live) and call
        ``refresh`` when it moved (``tick``: every ``interval`` even when it did not)."""
        listener = _Listener(model, refresh, interval, tick)
        with self._lock:
            self._listeners.append(listener)
            self._start()
        try:
            self._wait_ready()
            if history:
                groups, records = self._history(model)
                with listener.lock:
                    if groups is not None:
                        model.add_groups(groups["groups"], groups["cursor"])
                    model.add_records(records)
        except BaseException:
            self.remove(listener)
            raise
        self.poke(listener)
        return listener

    def remove(self, listener: _Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def poke(self, listener: _Listener) -> None:
        """Refresh ``listener`` soon even if its model did not change (e.g. a group opened)."""
        listener.seen = -1
        listener.due = 0.0

    def _history(self, model: GraphModel) -> tuple[dict, list[dict]]:
        """The counts of the model's groups and its newest records."""
        if model.scope == "cell":
            filters: dict = {"tag": model.tag}
            request: m.Message = m.ListTasks(filters, HISTORY_LIMIT)
        else:
            filters = {"job_id": model.job_id} if model.scope == "notebook" else {}
            request = m.ListTaskChanges(0, HISTORY_LIMIT)
        groups = self._request(m.ListTaskGroups(filters))
        answer = self._request(request)
        records = answer if isinstance(answer, list) else answer["tasks"]
        return groups, [r for r in records if "name" not in r or model.in_scope(r)]

    def _request(self, request: m.Message) -> Any:
        loop, conn = self._loop, self._conn
        if loop is None or conn is None:
            raise NoClusterError(f"the cluster's GCS at {self.address} went away")
        return asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(conn.request(request), CONNECT_TIMEOUT_S), loop,
        ).result(CONNECT_TIMEOUT_S + 1)

    def _wait_ready(self) -> None:
        if not self._ready.wait(CONNECT_TIMEOUT_S + 1):
            raise NoClusterError(f"the cluster's GCS at {self.address} did not answer")
        if self.error is not None:
            raise NoClusterError(f"cannot watch the cluster at {self.address}: {self.error}")

    # -- the thread -------------------------------------------------------------------------

    def _start(self) -> None:
        """Start the thread if it is not running (``_lock`` held)."""
        if self._thread is not None:
            return
        self._ready.clear()
        self.error = None
        self._thread = threading.Thread(target=self._run, name="cellfleet-task-feed",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to whoever asks
            self.error = self.error or exc
        finally:
            self._loop = self._conn = None
            loop.close()
            with self._lock:
                self._thread = None
                if self._listeners and self.error is None:
                    self._start()  # a view came as the idle connection closed
                else:
                    self._ready.set()  # wake whoever waits: they see the error

    async def _main(self) -> None:
        from cellfleet._rpc import connect

        closed = asyncio.Event()

        def on_publish(conn: Any, msg: m.Publish) -> None:
            if msg.channel == "tasks":
                self._deliver(msg.data)

        try:
            conn = await connect(self.address, self.token, {m.Publish: on_publish},
                                 timeout=CONNECT_TIMEOUT_S, on_close=lambda c: closed.set())
            conn.send(m.Subscribe("tasks"))
        except BaseException as exc:
            self.error = exc
            raise
        self._conn = conn
        self._ready.set()
        idle_since = None
        try:
            while not closed.is_set():
                self._refresh_due()
                done, idle_since = self._idle(idle_since)
                if done:
                    return
                try:
                    await asyncio.wait_for(closed.wait(), 0.1)
                except asyncio.TimeoutError:
                    pass
        finally:
            conn.close()

    def _idle(self, since: float | None) -> tuple[bool, float | None]:
        """(close the connection now?, since when no view has listened)."""
        with self._lock:
            if self._listeners:
                return False, None
            if since is None:
                return False, time.monotonic()
            if time.monotonic() - since > IDLE_S:
                self._ready.clear()  # new views wait for the next connection
                return True, since
            return False, since

    def _deliver(self, update: dict) -> None:
        """Merge a pushed update: the groups' counts, then the records a slice at a time
        (between slices the driver's other threads get the interpreter)."""
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            with listener.lock:
                listener.model.add_groups(update["groups"], update["cursor"])
        records = update["tasks"]
        for start in range(0, len(records), DELIVER_SLICE):
            part = records[start:start + DELIVER_SLICE]
            for listener in listeners:
                with listener.lock:
                    listener.model.add_records(part)
            time.sleep(0)

    def _refresh_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            if now < listener.due or (listener.model.version == listener.seen
                                      and not listener.tick):
                continue
            listener.seen = listener.model.version
            start = time.monotonic()
            try:
                with listener.lock:
                    listener.refresh()
            except Exception:  # noqa: BLE001 - a closed view must not stop the others
                self.remove(listener)
            # a view that costs more than a tenth of its interval is refreshed less often
            cost = time.monotonic() - start
            listener.due = now + max(listener.interval, 10 * cost)


class PollingFeed(TaskFeed):
    """A feed that reads a ``StateSource``'s changes every ``poll_s`` seconds (an engine with
    no pushed ``tasks`` channel); its records' counts are the views' own (no GCS groups)."""

    def __init__(self, address: str, source: Any, poll_s: float = 1.0) -> None:
        super().__init__(address, b"")
        self.source = source
        self.poll_s = poll_s
        self.cursor = 0

    def _history(self, model: GraphModel) -> tuple[dict | None, list[dict]]:
        answer = self._request(m.ListTaskChanges(0, HISTORY_LIMIT))
        return None, [r for r in answer["tasks"] if model.in_scope(r)]

    def _request(self, request: m.Message) -> Any:
        loop = self._loop
        if loop is None:
            raise NoClusterError(f"the cluster at {self.address} went away")
        try:
            return asyncio.run_coroutine_threadsafe(self.source.ask(request), loop).result(
                POLL_ANSWER_S)[0]
        except Exception as exc:  # noqa: BLE001 - the view says why it has no tasks
            raise NoClusterError(f"the cluster at {self.address} did not answer: "
                                 f"{type(exc).__name__}: {exc}") from None

    def _deliver(self, update: dict) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            with listener.lock:
                listener.model.add_records(update["tasks"])

    async def _main(self) -> None:
        self.cursor = 0
        self._conn = self.source
        self._ready.set()  # a view's first read (its history) waits for the source itself
        idle_since = None
        while True:
            try:
                (changes,) = await self.source.ask(m.ListTaskChanges(self.cursor, HISTORY_LIMIT))
            except Exception:  # noqa: BLE001 - an answer missed: the next poll reads it
                changes = {"cursor": self.cursor, "tasks": []}
            self.cursor = changes["cursor"]
            if changes["tasks"]:
                self._deliver(changes)
            self._refresh_due()
            done, idle_since = self._idle(idle_since)
            if done:
                return
            await asyncio.sleep(self.poll_s)  # the polling interval of an engine with no push


_feed: TaskFeed | None = None
_feed_lock = threading.Lock()
_installed: tuple[Callable[[], TaskFeed], Callable[[], Any]] | None = None


def use_feed(make: Callable[[], TaskFeed] | None, job_id: Callable[[], Any] | None = None) -> None:
    """Make this process's views follow another engine's feed (``make``) and notebook job
    (``job_id``); None: back to cellfleet's runtime."""
    global _installed
    _installed = None if make is None else (make, job_id or (lambda: None))


def current_address() -> str | None:
    """The address of the cluster this process's views follow, or None."""
    if _installed is not None:
        try:
            return _installed[0]().address
        except NoClusterError:
            return None
    core = _context.core
    return core.gcs_address if core is not None and core.kind == "driver" else None


def feed() -> TaskFeed:
    """This process's feed of the current cluster (``cellfleet.init()`` must have run)."""
    global _feed
    if _installed is not None:
        return _installed[0]()
    core = _context.core
    if core is None:
        raise NoClusterError(
            "no cellfleet cluster to watch: run cellfleet.init() first (in the cellfleet "
            "kernel the runtime starts by itself; '%cluster' shows it, '%cluster start' "
            "starts one)")
    with _feed_lock:
        if _feed is None or _feed.address != core.gcs_address:
            _feed = TaskFeed(core.gcs_address, core.token)
        return _feed


def current_job_id() -> Any:
    if _installed is not None:
        return _installed[1]()
    core = _context.core
    if core is None:
        raise NoClusterError("no cellfleet cluster: run cellfleet.init() first")
    return core.job_id
