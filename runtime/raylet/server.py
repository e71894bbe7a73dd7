"""The raylet: one per node. Local scheduler, worker pool and object store behind one port.

Clients (drivers and workers) register here first. Owners ask for worker leases and get a
worker's address back; from then on they talk to that worker directly. Processes on the node
ask for arena space for large objects, and owners release objects here when nobody can reach
them. Every second the raylet sends the GCS a heartbeat with its free resources, store figures
and load.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from .. import _messages as m
from .._rpc import Connection, HandlerTable
from .._shm import SharedArena
from ..core.peers import PeerCache
from ..core.pin_cache import GRACE_S as PIN_GRACE_S
from ..exceptions import ObjectStoreFullError, TaskUnschedulableError
from .bundles import BundleLedger
from .chunk_channel import ChannelPool, pull_object
from .chunk_server import ChunkReader, ChunkServer
from .cluster_scheduler import ClusterScheduler, Infeasible, Spill
from .object_manager import PROGRESS_BYTES, Pull
from .object_store import ObjectStore
from .pool_state import PoolLimits
from .scheduler import Grant, LeaseRequest, LocalScheduler, Reject, SpawnWorker, StopWorker
from .worker_pool import WorkerPool

__all__ = ["Raylet"]

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
REPORT_S = 0.05  # free resources and load go to the GCS at most this often when they change
PULLS_REPORTED = 10  # transfers a heartbeat tells the GCS of, at most
MAINTAIN_S = 0.25  # how often start deadlines, idle workers and exited starts are checked


class _Client:
    """What the raylet knows about one registered connection."""

    __slots__ = ("worker_id", "address", "pid", "kind", "job_id")

    def __init__(self, msg: m.RegisterClient) -> None:
        self.worker_id = msg.worker_id
        self.address = msg.address
        self.pid = msg.pid
        self.kind = msg.kind
        self.job_id = msg.job_id


class Raylet:
    """State and handlers of one node's raylet; ``raylet.__main__`` runs it."""

    def __init__(self, *, node_id: bytes, resources: dict[str, float], store: ObjectStore,
                 store_name: str, pool: WorkerPool, prestart: int, limits: PoolLimits,
                 arena: SharedArena | None = None, token: bytes = b"",
                 spill_dir: str = "") -> None:
        self.node_id = node_id
        self.arena = arena
        self.token = token  # to dial other nodes' raylets (pulls)
        self.spill_dir = spill_dir or tempfile.mkdtemp(prefix="cellfleet-spill-")
        self._spill_error: OSError | None = None  # the last spill's failure, if it failed
        self._restoring: set[bytes] = set()  # spilled objects being read back
        self.scheduler = LocalScheduler(dict(resources), limits, prestart)
        self.cluster = ClusterScheduler(node_id, self.scheduler)
        self.bundles = BundleLedger(self.scheduler)  # this node's part of placement groups
        self._report: asyncio.TimerHandle | None = None
        self._reported: tuple[dict, int] | None = None  # the figures the GCS has
        self.store = store
        self.store_name = store_name
        self.pool = pool
        self.gcs: Connection | None = None
        self._lease_futures: dict[int, asyncio.Future] = {}
        self._background: set[asyncio.Future] = set()  # GPU ids on their way to workers
        self._next_request = 1
        # Readers waiting for objects to be sealed: object id -> [(reader, ids, answer)].
        self._unsealed: dict[bytes, list[tuple[Connection, list, asyncio.Future]]] = {}
        self.channels = ChannelPool(token)  # to other nodes' chunk ports, for pulls
        self.address = ""  # this raylet's, once it serves (``serve_transfers``)
        self.chunks: ChunkServer | None = None  # this node's chunk port
        self.owners: PeerCache | None = None  # to owners, told where copies are
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pulls: dict[bytes, tuple[Pull, threading.Condition]] = {}  # in progress
        self._carry_out(self.scheduler.start())

    def serve_transfers(self, address: str) -> None:
        """Open this node's chunk port beside the raylet's own ``address`` (from the
        raylet's event loop), and the connections to owners that pulls report copies to."""
        self.address = address
        self._loop = asyncio.get_running_loop()
        self.owners = PeerCache(address, self.token, self.handlers())
        self.chunks = ChunkServer(address.rpartition(":")[0], self.token, self.store_name,
                                  self._pin_for_chunk, self._unpin_for_chunk,
                                  self._chunk_reader_gone)

    def close_transfers(self) -> None:
        """Close the chunk port and every connection pulls and owners used."""
        if self.chunks is not None:
            self.chunks.close()
        if self.owners is not None:
            self.owners.close()
        self.channels.close()

    def handlers(self) -> HandlerTable:
        return {
            m.RegisterClient: self.register_client,
            m.RequestLease: self.request_lease,
            m.ReturnLease: self.return_lease,
            m.CancelLeaseRequests: self.cancel_lease_requests,
            m.ShrinkLease: lambda conn, msg: self._carry_out(
                self.scheduler.shrink_lease(msg.lease_id, msg.resources)),
            m.NotifyBlocked: self.notify_blocked,
            m.NotifyUnblocked: self.notify_unblocked,
            m.AllocateObject: self.allocate_object,
            m.FreeObjects: lambda conn, msg: self._reclaim(self.store.release(msg.object_ids)),
            m.SealObject: self.seal_object,
            m.GetObjects: self.get_objects,
            m.ChunkAddress: lambda conn, msg: self.chunks.address,
            m.UnpinObjects: lambda conn, msg: self._reclaim(
                self.store.unpin(conn, msg.object_ids)),
            m.GetNodeStats: lambda conn, msg: self.stats(),
        }

    def gcs_handlers(self) -> HandlerTable:
        """What the GCS asks of this raylet on the raylet's own connection to it: the
        two-phase reservation of placement groups' bundles (``bundles``)."""
        return {
            m.PrepareBundles: self.prepare_bundles,
            m.CommitBundles: self.commit_bundles,
            m.ReturnBundles: self.return_bundles,
        }

    # -- placement groups -----------------------------------------------------------------

    def prepare_bundles(self, conn: Connection, msg: m.PrepareBundles) -> bool:
        ok = self.bundles.prepare(msg.pg_id, msg.attempt, msg.bundles)
        if ok and msg.commit:
            ok, actions = self.bundles.commit(msg.pg_id, msg.attempt,
                                              [index for index, _ in msg.bundles])
            self._carry_out(actions)
        self._report_soon()
        return ok

    def commit_bundles(self, conn: Connection, msg: m.CommitBundles) -> bool:
        ok, actions = self.bundles.commit(msg.pg_id, msg.attempt, msg.indices)
        self._carry_out(actions)
        return ok

    def placement_group_removed(self, pg_id: bytes) -> None:
        """The GCS removed a group: requests for it, queued here or waiting, are refused, and
        so are later ones."""
        self.bundles.group_removed(pg_id)
        refused, actions = self.cluster.withdraw_where(lambda r: _in_group(r, pg_id))
        self._carry_out([Reject(r, _removed(pg_id)) for r in refused] + actions)

    def gcs_lost(self) -> None:
        """The connection to the GCS closed: the GCS holds this node dead and places its
        bundles elsewhere, so they are given back here (work using them ends)."""
        for pg_id in {pg_id for pg_id, _ in self.bundles.bundles}:
            self.return_bundles(None, m.ReturnBundles(pg_id, -1))

    def return_bundles(self, conn: Connection | None, msg: m.ReturnBundles) -> None:
        workers, actions = self.bundles.give_back(msg.pg_id, msg.attempt)
        for worker_id in workers:  # tasks and actors in the removed bundles end
            self.pool.kill(worker_id)
        self._carry_out(actions)

    # -- clients --------------------------------------------------------------------------

    def register_client(self, conn: Connection, msg: m.RegisterClient) -> dict[str, Any]:
        client = _Client(msg)
        conn.state = client
        if self.owners is not None:  # copies of its objects are reported on its connection
            self.owners.inbound[msg.address] = conn
        if msg.kind == "worker":
            if not self.pool.registered(msg.worker_id, conn, msg.address):
                raise ValueError("unknown worker id")
            self._carry_out(self.scheduler.worker_registered(msg.worker_id))
        return {
            "node_id": self.node_id,
            "store_name": self.store_name,
            "store_capacity": self.store.capacity,
            "resources": self.scheduler.total,
        }

    def connection_closed(self, conn: Connection) -> None:
        client: _Client | None = conn.state
        self._reclaim(self.store.reader_gone(conn))
        self._answer_dropped()
        if client is not None:
            if self.owners is not None and self.owners.inbound.get(client.address) is conn:
                del self.owners.inbound[client.address]
            if client.kind == "worker":
                self.pool.remove(client.worker_id)
                self.worker_exited(client.worker_id)
            self._reclaim(self.store.owner_gone(client.address))
            if self.gcs is not None and self.gcs.is_open:
                self.gcs.send(m.ProcessExited(client.address))  # its borrows end with it
        # Owners on other nodes lease here without registering: their requests and leases
        # end with their connection too.
        cancelled, actions = self.cluster.cancel_requests(conn)
        for request in cancelled:
            self._lease_futures.pop(request.request_id).cancel()  # nobody waits for it now
        self._carry_out(actions)
        # Leases held by a departed owner: their workers may be mid-task for nobody, and its
        # actors share its fate (detached actors live on).
        for lease in list(self.scheduler.leases.values()):
            if lease.owner is conn and lease.kind != "detached_actor":
                self.pool.kill(lease.worker_id)

    def worker_exited(self, worker_id: bytes) -> None:
        self.pool.remove(worker_id)
        _, actions = self.scheduler.worker_died(worker_id)
        self._carry_out(actions)

    def worker_failed_to_start(self, worker_id: bytes) -> None:
        self.pool.remove(worker_id)
        self._carry_out(self.scheduler.worker_failed_to_start(worker_id))

    # -- leases ---------------------------------------------------------------------------

    def request_lease(self, conn: Connection, msg: m.RequestLease) -> asyncio.Future:
        request_id = self._next_request
        self._next_request += 1
        future = asyncio.get_running_loop().create_future()
        self._lease_futures[request_id] = future
        request = LeaseRequest(request_id, msg.resources, conn, msg.kind, msg.strategy,
                               msg.spilled, msg.wait_infeasible, msg.reason or "local",
                               msg.task_s, msg.locality, key=msg.scheduling_key)
        if msg.strategy and msg.strategy[0] == "PLACEMENT_GROUP" and \
                self.bundles.was_removed(msg.strategy[1]):
            self._carry_out([Reject(request, _removed(msg.strategy[1]))])
        else:
            self._carry_out(self.cluster.request_lease(request))
        return future

    def cancel_lease_requests(self, conn: Connection, msg: m.CancelLeaseRequests) -> None:
        key = msg.scheduling_key
        cancelled, actions = self.cluster.withdraw_where(
            lambda r: r.owner is conn and r.key == key)
        for request in cancelled:
            future = self._lease_futures.pop(request.request_id)
            if not future.done():
                future.set_result({"cancelled": True})
        self._carry_out(actions)

    def return_lease(self, conn: Connection, msg: m.ReturnLease) -> None:
        lease = self.scheduler.leases.get(msg.lease_id)
        if lease is None:
            return
        if msg.worker_failed:
            self.pool.kill(lease.worker_id)
        self._carry_out(self.scheduler.return_lease(msg.lease_id, not msg.worker_failed))

    def notify_blocked(self, conn: Connection, msg: m.NotifyBlocked) -> None:
        self._carry_out(self.scheduler.worker_blocked(conn.state.worker_id))

    def notify_unblocked(self, conn: Connection, msg: m.NotifyUnblocked) -> None:
        self.scheduler.worker_unblocked(conn.state.worker_id)
        self._report_soon()

    def gcs_connected(self, gcs: Connection, view: list) -> None:
        """Registered with the GCS (again): take its resource view, and report this node's
        figures afresh (the GCS starts from the node's totals)."""
        self.gcs = gcs
        self._reported = None
        self.resources_published(view, replace=True)

    def resources_published(self, rows: list, replace: bool = False) -> None:
        """The GCS broadcast changes of other nodes' resources (``replace``: the whole view):
        parked requests may fit now."""
        self._carry_out(self.cluster.update_nodes(rows, replace))

    def _carry_out(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Grant):
                future = self._lease_futures.pop(action.request.request_id)
                if action.tell_worker:
                    task = asyncio.ensure_future(self._grant_with_gpus(action, future))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
                else:
                    self._grant(action, future)
            elif isinstance(action, SpawnWorker):
                self._spawn(action.worker_id)
            elif isinstance(action, StopWorker):
                logger.info("stopping worker %s: %s", action.worker_id.hex()[:12], action.reason)
                self.pool.kill(action.worker_id)
            elif isinstance(action, Reject):
                future = self._lease_futures.pop(action.request.request_id)
                if not future.done():
                    future.set_exception(
                        TaskUnschedulableError(f"cannot schedule the task: {action.reason}")
                    )
            elif isinstance(action, Spill):
                future = self._lease_futures.pop(action.request.request_id)
                if not future.done():
                    future.set_result({"spill": action.address, "node_id": action.node_id,
                                       "reason": action.reason})
            elif isinstance(action, Infeasible):
                future = self._lease_futures.pop(action.request.request_id)
                if not future.done():
                    future.set_result({"infeasible": action.reason})
        self._report_soon()  # whatever led here may have changed the free resources

    def _grant(self, action: Grant, future: asyncio.Future) -> None:
        worker = self.pool.workers.get(action.lease.worker_id)
        if future.done() or worker is None:
            self._carry_out(self.scheduler.return_lease(action.lease.lease_id,
                                                        worker is not None))
            return
        future.set_result([action.lease.lease_id, worker.worker_id, worker.address,
                           self.node_id, action.request.reason])

    async def _grant_with_gpus(self, action: Grant, future: asyncio.Future) -> None:
        """Tell the worker its GPU ids before its leaseholder can push it a task."""
        worker = self.pool.workers.get(action.lease.worker_id)
        if worker is not None and worker.conn is not None:
            try:
                await worker.conn.request(m.AssignGpus(action.lease.gpu_ids))
            except Exception as exc:  # it died meanwhile: its exit returns the lease
                logger.info("could not give worker its GPU ids: %r", exc)
                return
        self._grant(action, future)

    def _spawn(self, worker_id: bytes) -> None:
        try:
            self.pool.start(worker_id)
        except OSError as exc:  # EMFILE, EAGAIN, ENOMEM: try again after a back-off
            logger.warning("could not start a worker: %s", exc)
            self.worker_failed_to_start(worker_id)

    async def maintain_loop(self) -> None:
        """Notice starts that failed or are overdue, stop idle workers, start queued ones."""
        while True:
            await asyncio.sleep(MAINTAIN_S)
            for worker_id in self.pool.exited_unregistered():
                self.worker_failed_to_start(worker_id)
            self._carry_out(self.cluster.tick() + self.scheduler.tick())

    # -- objects --------------------------------------------------------------------------

    def _reclaim(self, ranges: list[tuple[int, int]]) -> None:
        """Give the memory of freed arena ranges back to the system, and the disk of spill
        files no object needs any more."""
        if self.arena is not None:
            for offset, size in ranges:
                self.arena.discard(offset, size)
        for path in self.store.take_spill_deletions():
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def allocate_object(self, conn: Connection, msg: m.AllocateObject) -> int:
        """Space for a new object; a full store spills objects nobody reads to disk first."""
        return await self._allocate(
            lambda: self.store.allocate(msg.object_id, msg.size, msg.owner_address,
                                        writer=conn), msg.size)

    async def _allocate(self, allocate: Callable[[], Any], size: int) -> Any:
        for attempt in range(SPILL_ROUNDS):
            try:
                return allocate()
            except ObjectStoreFullError:
                if self._evict(size):  # secondary copies go before any primary is spilled
                    with contextlib.suppress(ObjectStoreFullError):
                        return allocate()
                if not await self._spill(size):
                    if attempt:
                        break
                    # Readers keep their pins a moment past their last view (pin_cache):
                    # objects read just now become spillable after that grace.
                    await asyncio.sleep(PIN_GRACE_S * 1.5)
        try:
            return allocate()
        except ObjectStoreFullError as exc:
            if self._spill_error is None:
                raise
            raise ObjectStoreFullError(f"{exc} Spilling to {self.spill_dir} failed too: "
                                       f"{self._spill_error}") from None

    def _evict(self, size: int) -> bool:
        """Free secondary copies nobody reads until ``size`` bytes would fit, telling their
        owners; False if there was none to free."""
        evicted, ranges = self.store.evict(size)
        self._reclaim(ranges)
        for object_id, owner in evicted:
            self._tell_owner(owner, m.ObjectLocationRemoved(object_id, self.address))
        return bool(evicted)

    def _tell_owner(self, owner: str, message: m.Message) -> None:
        if owner and self.owners is not None:
            self.owners.send(owner, message)

    async def _spill(self, size: int) -> bool:
        """Write primary copies nobody reads to files until ``size`` bytes would fit; False
        if nothing could be spilled."""
        chosen = self.store.spill_candidates(size)
        if not chosen:
            return False
        loop = asyncio.get_running_loop()
        spilled_any = False
        for object_id in chosen:
            obj = self.store.objects[object_id]
            path = os.path.join(self.spill_dir, object_id.hex())
            view = self.arena.read_view(obj.offset, obj.size)
            try:
                await loop.run_in_executor(None, _write_file, path, view)
                self._spill_error = None
                spilled_any = True
            except OSError as exc:  # a full or missing disk: the object stays in memory
                logger.warning("could not spill object %s to %s: %s", object_id.hex(),
                               path, exc)
                self._spill_error = exc
                path = None
            finally:
                view.release()
            self._reclaim(self.store.spilled_out(object_id, path))
        return spilled_any

    def _start_restore(self, object_id: bytes) -> None:
        """Read a spilled object back into the arena; its readers wait for the seal."""
        self._restoring.add(object_id)
        task = asyncio.get_running_loop().create_task(self._restore(object_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda _: self._restoring.discard(object_id))

    async def _restore(self, object_id: bytes) -> None:
        try:
            offset, spilled = await self._allocate(
                lambda: self.store.restoring(object_id), self.store.spilled[object_id].size)
            into = self.arena.writable_view(offset, spilled.size)
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, _read_file, spilled.path, into)
            finally:
                into.release()
        except Exception as exc:  # the file went, or there is no room: readers hear None
            logger.warning("could not restore spilled object %s: %s", object_id.hex(), exc)
            self.store.spilled.pop(object_id, None)
            self._reclaim(self.store.drop_unsealed(object_id))
            self._answer_dropped()
            return
        self.seal_object(None, m.SealObject(object_id))
        self._reclaim([])  # its file is no longer needed

    def seal_object(self, conn: Connection, msg: m.SealObject) -> None:
        if self.store.seal(msg.object_id):
            for reader, ids, answer in self._unsealed.pop(msg.object_id, ()):
                if reader.is_open and not answer.done():  # a gone reader's pins would leak
                    self._answer_locations(reader, ids, answer)

    def get_objects(self, conn: Connection, msg: m.GetObjects) -> Any:
        """Where objects are, pinned for the reader; waits for any not sealed yet, and pulls
        a copy of any that other nodes hold (``object_manager``)."""
        for object_id, source in zip(msg.object_ids, msg.sources or ()):
            if source is not None and object_id not in self.store.objects:
                self._start_pull(object_id, source)
        for object_id in msg.object_ids:
            if object_id in self.store.spilled and object_id not in self._restoring:
                self._start_restore(object_id)
        answer = asyncio.get_running_loop().create_future()
        self._answer_locations(conn, msg.object_ids, answer)
        return answer.result() if answer.done() else answer  # at once when all are here

    def _start_pull(self, object_id: bytes, source: list) -> None:
        """Make room for a copy (secondary copies nobody reads go first; else
        ObjectStoreFullError says what is in the way) and fetch it from its holders."""
        holders = [source[0], *(h for h in source[3:] if h != source[0] and h != self.address)]
        size, owner = source[1], source[2]
        try:
            offset = self.store.allocate(object_id, size, owner, secondary=True)
        except ObjectStoreFullError:
            if not self._evict(size):
                raise
            offset = self.store.allocate(object_id, size, owner, secondary=True)
        pull = Pull(object_id, size, holders, offset, owner)
        task = asyncio.get_running_loop().create_task(self._pull(pull))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _pull(self, pull: Pull) -> None:
        """Carry a pull out on threads (``chunk_channel``): the bytes go from the holders'
        sockets straight into the copy's block, and this loop stays free meanwhile. The
        whole copy is sealed and its owner told where it is."""
        into = self.arena.writable_view(pull.offset, pull.size)
        loop = asyncio.get_running_loop()
        on_chunk = None
        if pull.size >= PROGRESS_BYTES:
            step = pull.size // PROGRESS_STEPS
            reported = [0]

            def on_chunk(done: int) -> None:  # on a lane's thread
                if done - reported[0] >= step or done == pull.size:
                    reported[0] = done
                    loop.call_soon_threadsafe(self._pull_progress, pull, done)
        cond = threading.Condition()
        self._pulls[pull.object_id] = (pull, cond)
        try:
            await loop.run_in_executor(None, pull_object, pull, into, self.channels, cond,
                                       on_chunk)
        except Exception as exc:  # every holder went, or lost the object: readers hear None
            logger.warning("could not pull object %s from %s: %s", pull.object_id.hex(),
                           ", ".join(pull.holders), exc)
            self._reclaim(self.store.drop_unsealed(pull.object_id))
            self._answer_dropped()
            return
        finally:
            into.release()
            del self._pulls[pull.object_id]
        self.seal_object(None, m.SealObject(pull.object_id))
        self._reclaim(self.store.pulled(pull.object_id))
        if pull.object_id in self.store.objects:
            self._tell_owner(pull.owner, m.ObjectLocationAdded(pull.object_id, self.node_id,
                                                               self.address))

    def _pull_progress(self, pull: Pull, done: int) -> None:
        """Tell the readers waiting for a large pull how far it is."""
        notice = m.PullProgress(pull.object_id, done, pull.size, ", ".join(pull.holders))
        for reader, _, answer in self._unsealed.get(pull.object_id, ()):
            if reader.is_open and not answer.done():
                reader.send(notice)

    # The chunk port's threads ask for pins here: the store belongs to the event loop.

    def _pin_for_chunk(self, key: ChunkReader, object_id: bytes) -> tuple[int, int] | None:
        """``(offset, size)`` of ``object_id`` pinned for a chunk connection; a spilled copy
        is read back first (the pull waits for it, as a local reader would)."""
        pinned: concurrent.futures.Future = concurrent.futures.Future()

        def answered(answer: asyncio.Future) -> None:
            where = None if answer.cancelled() else answer.result()[0]
            pinned.set_result(tuple(where) if where else None)

        def pin() -> None:
            if object_id in self.store.spilled and object_id not in self._restoring:
                self._start_restore(object_id)
            answer = self._loop.create_future()
            answer.add_done_callback(answered)
            self._answer_locations(key, [object_id], answer)

        try:
            self._loop.call_soon_threadsafe(pin)
        except RuntimeError:  # the loop has stopped: the raylet is going
            return None
        try:
            return pinned.result(timeout=CHUNK_PIN_WAIT_S)
        except concurrent.futures.TimeoutError:  # never sealed: the puller tries elsewhere
            return None

    def _unpin_for_chunk(self, key: object, object_id: bytes) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(
                lambda: self._reclaim(self.store.unpin(key, [object_id])))

    def _chunk_reader_gone(self, key: object) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(lambda: self._reclaim(self.store.reader_gone(key)))

    def _answer_locations(self, reader: Connection, ids: list, answer: asyncio.Future) -> None:
        where = self.store.locate(reader, ids)
        unsealed = [object_id for object_id, at in zip(ids, where) if at is False]
        if not unsealed:
            answer.set_result(where)
            return
        # Ask again once the first unsealed one is sealed; pins taken now are given back.
        self._reclaim(self.store.unpin(
            reader, [object_id for object_id, at in zip(ids, where) if at]))
        self._unsealed.setdefault(unsealed[0], []).append((reader, ids, answer))

    def owner_exited(self, address: str) -> None:
        """A process exited somewhere in the cluster: objects it owned here are unreachable."""
        self._reclaim(self.store.owner_gone(address))

    def _answer_dropped(self) -> None:
        """Readers waiting for objects that will never be sealed now hear they are not here."""
        for object_id in [oid for oid in self._unsealed if oid not in self.store.objects]:
            for reader, ids, answer in self._unsealed.pop(object_id):
                if reader.is_open and not answer.done():
                    self._answer_locations(reader, ids, answer)

    # -- reporting ------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "resources": self.scheduler.total,
            "available": self.scheduler.available,
            "store": self.store.stats(),
            "load": self.scheduler.load(),
            "cluster_view": {node.node_id.hex(): {"available": node.available,
                                                  "queued": node.queued}
                             for node in self.cluster.nodes.values()},
            "pool": self.scheduler.workers.stats(),
            "pulls": [self._pull_stats(*entry) for entry in list(self._pulls.values())[:100]],
            "served_bytes": self.chunks.served_bytes if self.chunks is not None else 0,
            "workers": [
                {"worker_id": w.worker_id, "pid": w.process.pid, "address": w.address}
                for w in self.pool.workers.values()
            ],
            "pid": os.getpid(),
        }

    @staticmethod
    def _pull_stats(pull: Pull, cond: threading.Condition) -> dict[str, Any]:
        with cond:
            return {"object_id": pull.object_id.hex(), "size": pull.size,
                    "received": pull.received, "holders": pull.holders,
                    "failed": sorted(pull.failed), "waiting_on": pull.waiting_on()}

    def _report_soon(self) -> None:
        if self._report is None and self.gcs is not None:
            self._report = asyncio.get_running_loop().call_later(REPORT_S, self._send_report)

    def _send_report(self) -> None:
        """The node's free resources and queue to the GCS, if they changed since last sent."""
        self._report = None
        gcs = self.gcs
        figures = (self.scheduler.available, len(self.scheduler.queue))
        if gcs is None or not gcs.is_open or figures == self._reported:
            return
        self._reported = (dict(figures[0]), figures[1])
        gcs.send(m.ReportResources(self.node_id, self.scheduler.available,
                                   self.scheduler.load()))

    async def heartbeat_loop(self) -> None:
        """The node's figures to the GCS every second; one heartbeat in flight at a time, so
        a stalled GCS does not pile up unanswered requests."""
        reply: asyncio.Future | None = None
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            gcs = self.gcs
            if gcs is None or not gcs.is_open or (reply is not None and not reply.done()):
                continue
            store = self.store.stats()
            store.pop("largest")
            store["pulls"] = [  # transfers under way, for the dashboard's nodes page
                {"object_id": pull.object_id.hex(), "size": pull.size, "received": pull.received}
                for pull, _ in list(self._pulls.values())[:PULLS_REPORTED]]
            reply = gcs.request(m.Heartbeat(self.node_id, self.scheduler.available, store,
                                            self.scheduler.load()))
            reply.add_done_callback(lambda fut, gcs=gcs: self._heartbeat_answered(gcs, fut))

    def _heartbeat_answered(self, gcs: Connection, reply: asyncio.Future) -> None:
        """The GCS answers False when it holds this node dead (it was paused past the
        timeout): drop the connection, so that the raylet connects and registers again."""
        if reply.cancelled() or reply.exception() is not None or reply.result() is not False:
            return
        if gcs is self.gcs and gcs.is_open:
            logger.warning("the GCS had declared this node dead; registering again")
            gcs.close()


def _in_group(request: LeaseRequest, pg_id: bytes) -> bool:
    strategy = request.strategy
    return bool(strategy) and strategy[0] == "PLACEMENT_GROUP" and strategy[1] == pg_id


def _removed(pg_id: bytes) -> str:
    return (f"its placement group {pg_id.hex()} was removed: create a new one, or submit "
            "it without the placement group")


SPILL_ROUNDS = 3  # spill-and-retry rounds before an allocation gives up
CHUNK_PIN_WAIT_S = 60.0  # a chunk request for an object being restored waits this long at most
PROGRESS_STEPS = 50  # a large pull tells its readers how far it is at most this many times


def _write_file(path: str, data: memoryview) -> None:
    """Write a spilled object's bytes (on a thread: the raylet's loop goes on meanwhile),
    readable by this user only, as the shared memory is."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as file:
            file.write(data)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def _read_file(path: str, into: memoryview) -> None:
    with open(path, "rb") as file:
        if file.readinto(into) != len(into):
            raise OSError(f"{path} is shorter than the object it holds")
