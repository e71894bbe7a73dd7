"""Typed control messages and their compact msgpack encoding.

A frame's payload is the msgpack list ``[code, request_id, *fields]``. ``request_id`` is 0 for a
one-way message; otherwise the receiver answers with ``Reply`` or ``ErrorReply`` carrying the same
id. Values that are Python objects travel as cloudpickle bytes inside a field; msgpack itself
never builds anything but plain data, so decoding a frame cannot run code.

Messages are grouped by the process that receives them: the GCS, a raylet, a core worker (the
owner side of every driver and worker).
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgpack

from .exceptions import ProtocolError

__all__ = ["BULK_BYTES", "MESSAGE_TYPES", "Message", "bulk_head", "decode", "encode",
           "encode_parts"]

MESSAGE_TYPES: dict[int, type[Message]] = {}


class Message:
    """Base of every wire message: slotted, with its fields in declaration order.

    Subclasses declare fields as annotations (a default only for the last ones); ``_message``
    gives them ``__slots__``, an ``__init__`` taking the fields in order, equality and a repr.
    (Lighter than dataclasses: every runtime process defines all messages at start-up.)
    """

    __slots__ = ()
    code: ClassVar[int]
    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__} takes {len(fields)} fields")
        values = dict(zip(fields, args))
        values.update(kwargs)
        for name in fields:
            if name in values:
                setattr(self, name, values[name])
            elif name in self._defaults:
                setattr(self, name, self._defaults[name])
            else:
                raise TypeError(f"{type(self).__name__} is missing field {name!r}")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, f) == getattr(other, f) for f in self._fields)

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({inner})"


def _message(code: int):
    def register(cls: type) -> type:
        if code in MESSAGE_TYPES:
            raise ValueError(f"message code {code} used twice")
        fields = tuple(cls.__dict__.get("__annotations__", {}))
        namespace = {
            "__slots__": fields, "__doc__": cls.__doc__, "__module__": cls.__module__,
            "__qualname__": cls.__qualname__, "code": code, "_fields": fields,
            "_defaults": {f: cls.__dict__[f] for f in fields if f in cls.__dict__},
        }
        message_cls = type(cls.__name__, (Message,), namespace)
        MESSAGE_TYPES[code] = message_cls
        return message_cls

    return register


_packer = msgpack.Packer(use_bin_type=True)


def encode(message: Message, request_id: int = 0) -> bytes:
    """Serialize ``message`` (with the request id it answers or expects an answer to)."""
    return _packer.pack(
        [message.code, request_id, *[getattr(message, f) for f in message._fields]]
    )


BULK_BYTES = 1 << 20  # a last field this large is sent as it is, not copied into the packing


def encode_parts(message: Message, request_id: int = 0) -> list:
    """``encode`` as pieces to write back to back: a message whose last field is a buffer of
    ``BULK_BYTES`` or more (an object chunk) ends with that buffer itself, uncopied, after a
    hand-made msgpack header (an array, then ``bin 32`` of its length)."""
    fields = [getattr(message, f) for f in message._fields]
    bulk = fields[-1] if fields else None
    if type(bulk) not in (bytes, memoryview) or len(bulk) < BULK_BYTES or len(fields) > 13:
        return [encode(message, request_id)]
    head = bulk_head(message.code, request_id, fields[:-1])
    return [head + len(bulk).to_bytes(4, "big"), bulk]


def bulk_head(code: int, request_id: int, fields: list = ()) -> bytes:
    """The start of a bulk message (``encode_parts``) up to its buffer's 4-byte length."""
    return b"".join([bytes([0x90 | (len(fields) + 3)]), _packer.pack(code),
                     _packer.pack(request_id), *map(_packer.pack, fields), b"\xc6"])


def decode(payload: bytes) -> tuple[Message, int]:
    """Parse a frame payload into ``(message, request_id)``; ProtocolError if malformed."""
    try:
        items = msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=False)
        code, request_id, *fields = items
        cls = MESSAGE_TYPES[code]
        return cls(*fields), request_id
    except Exception as exc:  # any malformed input is one kind of error to the caller
        raise ProtocolError(f"malformed message: {exc!r}"[:200]) from None


# --- replies -------------------------------------------------------------------------------


@_message(1)
class Reply(Message):
    value: Any = None


@_message(2)
class ErrorReply(Message):
    """A request failed; ``kind`` names an exception class of ``cellfleet.exceptions``."""

    kind: str
    message: str


# --- GCS -----------------------------------------------------------------------------------


@_message(10)
class RegisterNode(Message):
    """Refused (``ValueError``) when ``version`` is not the GCS's cellfleet version."""

    node_id: bytes
    raylet_address: str
    resources: dict
    store_name: str
    store_capacity: int
    session_dir: str
    version: str = ""


@_message(11)
class Heartbeat(Message):
    node_id: bytes
    available: dict
    store: dict
    load: dict


@_message(12)
class GetNodes(Message):
    pass


@_message(13)
class RegisterJob(Message):
    driver_address: str
    pid: int
    namespace: str
    entrypoint: str


@_message(14)
class FinishJob(Message):
    job_id: int


@_message(15)
class ExportFunction(Message):
    function_id: bytes
    name: str
    blob: bytes


@_message(16)
class GetFunction(Message):
    function_id: bytes


@_message(17)
class KvPut(Message):
    namespace: str
    key: bytes
    value: bytes
    overwrite: bool


@_message(18)
class KvGet(Message):
    namespace: str
    key: bytes


@_message(19)
class KvDelete(Message):
    namespace: str
    key: bytes


@_message(20)
class KvKeys(Message):
    namespace: str
    prefix: bytes


@_message(21)
class AddEvents(Message):
    """Batched task and object events from one core worker (see ``gcs.task_events``), and how
    many its bounded buffer dropped since the last batch (``{"task_events": n, ...}``)."""

    tasks: list
    objects: list
    dropped: dict | None = None


@_message(22)
class ListTasks(Message):
    filters: dict
    limit: int


@_message(23)
class AddLogs(Message):
    """Lines a worker printed: each ``[job_id, tag, task_id, name, pid, stream, text]``."""

    lines: list


@_message(24)
class Subscribe(Message):
    """Receive ``channel``'s publications; on ``logs``, a ``job_id`` >= 0 keeps that job's."""

    channel: str
    job_id: int = -1


@_message(25)
class Publish(Message):
    channel: str
    data: Any


@_message(26)
class ListObjects(Message):
    limit: int


@_message(27)
class SummarizeTasks(Message):
    pass


@_message(80)
class ListTaskChanges(Message):
    """Task records changed after sequence number ``since`` (``TaskEventStore.changes_since``):
    a viewer's incremental cursor. Subscribing to the ``tasks`` channel pushes, once a second,
    the changed groups' counts and a bounded sample of the changed records instead
    (``TaskEventStore.view_update``)."""

    since: int
    limit: int


@_message(81)
class ListTaskGroups(Message):
    """State counts per (job_id, tag, function) of the groups matching ``filters`` (``job_id``,
    ``tag``): ``{"cursor", "groups": [[job_id, tag, name, {state: n}], ...]}``."""

    filters: dict


@_message(28)
class ListJobs(Message):
    pass


@_message(29)
class RegisterActor(Message):
    """A new actor (state PENDING); fails if its name is taken, unless ``get_if_exists``."""

    actor_id: bytes
    info: dict
    get_if_exists: bool


@_message(41)
class UpdateActor(Message):
    """An actor's state changed (ALIVE with its address, RESTARTING, or DEAD with why)."""

    actor_id: bytes
    state: str
    info: dict


@_message(42)
class GetNamedActor(Message):
    name: str
    namespace: str


@_message(43)
class WaitActor(Message):
    """Answered once the actor is ALIVE or DEAD, with its record."""

    actor_id: bytes


@_message(44)
class ListActors(Message):
    pass


@_message(45)
class ProcessExited(Message):
    """A raylet saw a driver or worker go; the GCS tells every core worker (``exits``)."""

    address: str


@_message(46)
class GetTableStats(Message):
    """The sizes of the GCS's bounded tables and what each dropped (``cellfleet status``)."""


@_message(47)
class ReportResources(Message):
    """A raylet's free resources and load changed (sent at most every 50 ms; the GCS
    broadcasts the cluster's changes on the ``resources`` channel)."""

    node_id: bytes
    available: dict
    load: dict


# --- raylet --------------------------------------------------------------------------------


@_message(30)
class RegisterClient(Message):
    """A driver or worker joins its node; the reply describes the node."""

    worker_id: bytes
    address: str
    pid: int
    kind: str
    job_id: int


@_message(31)
class RequestLease(Message):
    """``kind``: "task", "actor" (dies with its owner) or "detached_actor"; ``strategy``:
    ``util.scheduling_strategies.strategy_to_wire``. Answered ``[lease_id, worker_id,
    address, node_id, reason]`` (granted), ``{"spill": raylet_address, "node_id", "reason"}``
    (ask that node's raylet, with ``spilled`` and that ``reason``), ``{"infeasible":
    reason}`` (no node fits: ask again with ``wait_infeasible`` to wait for one) or
    ``{"cancelled": True}`` (the owner sent ``CancelLeaseRequests`` for its key).
    ``task_s``: the owner's mean run time of such tasks (0: unknown), for wait estimates;
    ``locality``: ``[node_id, bytes]``, the node holding most of the tasks' argument bytes."""

    resources: dict
    scheduling_key: str
    kind: str
    strategy: list | None = None
    spilled: bool = False
    wait_infeasible: bool = False
    reason: str = ""
    task_s: float = 0.0
    locality: list | None = None


@_message(32)
class ReturnLease(Message):
    lease_id: int
    worker_failed: bool


@_message(37)
class CancelLeaseRequests(Message):
    """The owner no longer needs its lease requests of ``scheduling_key`` that wait at this
    raylet: they are answered ``{"cancelled": True}`` (one already granted or spilled on is
    answered as it was)."""

    scheduling_key: str


@_message(33)
class NotifyBlocked(Message):
    pass


@_message(34)
class NotifyUnblocked(Message):
    pass


ALREADY_STORED = -1  # AllocateObject's answer when the node holds the object sealed already


@_message(35)
class AllocateObject(Message):
    """Answered with the offset of a block for the object, or ``ALREADY_STORED``."""

    object_id: bytes
    size: int
    owner_address: str


@_message(36)
class FreeObjects(Message):
    object_ids: list


@_message(38)
class UnpinObjects(Message):
    object_ids: list


@_message(90)
class GetObjects(Message):
    """Asks the node's store where objects are, by id; each is pinned for the asker before
    the answer, one ``[offset, size]`` per id (``None``: not on this node), sent once every
    one of them is sealed. ``sources``: per id, ``[raylet_address, size, owner_address,
    *more_raylet_addresses]`` of the nodes that hold it when those are other nodes (the
    raylet pulls a copy first, from all of them), else ``None``."""

    object_ids: list
    sources: list | None = None


@_message(93)
class PullProgress(Message):
    """Raylet to a reader waiting for an object it is pulling: ``done`` of ``total`` bytes
    are here, from the raylet at ``source`` (large pulls only, see ``object_manager``)."""

    object_id: bytes
    done: int
    total: int
    source: str


@_message(92)
class ReadObjectChunk(Message):
    """Raylet to raylet, on the holder's chunk port: ``size`` bytes of a sealed object from
    ``offset``, answered as a bulk reply (``None`` if it is not here). The holder pins the
    object while it writes the chunk."""

    object_id: bytes
    offset: int
    size: int


@_message(100)
class ChunkAddress(Message):
    """Raylet to raylet: the ``host:port`` of the chunk port, where pulls read objects."""


@_message(101)
class ObjectLocationAdded(Message):
    """Raylet to an object's owner: a copy of the object is now sealed in the store of the
    node ``node_id``, whose raylet is at ``address`` (a secondary copy, pulled there)."""

    object_id: bytes
    node_id: bytes
    address: str


@_message(102)
class ObjectLocationRemoved(Message):
    """Raylet to an object's owner: the secondary copy at ``address`` is gone (evicted)."""

    object_id: bytes
    address: str


@_message(91)
class SealObject(Message):
    """The creator has written all of an object's bytes: it may be read."""

    object_id: bytes


@_message(39)
class GetNodeStats(Message):
    pass


@_message(40)
class ShrinkLease(Message):
    """An actor is placed: keep only the resources it needs to run."""

    lease_id: int
    resources: dict


# --- core worker ---------------------------------------------------------------------------


@_message(58)
class AssignGpus(Message):
    """Raylet to worker, before its next lease is granted: the GPU ids that lease holds."""

    gpu_ids: list


@_message(50)
class PushTasks(Message):
    """Task specs (``core.task_spec.TaskSpec.to_wire``) from their owner to a leased worker."""

    tasks: list


@_message(51)
class TaskResults(Message):
    """Results (``core.task_spec.TaskResult.to_wire``) from the worker back to the owner."""

    results: list


@_message(52)
class GetObjectStatus(Message):
    """Asks an owner for an object; answered once the object is ready."""

    object_id: bytes


@_message(150)
class ReconstructObject(Message):
    """Asks an owner to run again the task that made an object whose every copy was lost;
    answered None once the new run is under way (the object is not ready yet), or the error
    payload saying why it cannot be rebuilt."""

    object_id: bytes


@_message(151)
class StealTasks(Message):
    """Owner to worker: give back these pushed tasks if they have not started; answered with
    the ids of those given back (they will not run there)."""

    task_ids: list


@_message(53)
class AddBorrowers(Message):
    """``borrower`` (a core worker address) now holds refs to these objects of the receiver."""

    object_ids: list
    borrower: str


@_message(54)
class RemoveBorrowers(Message):
    object_ids: list
    borrower: str


@_message(56)
class KillActor(Message):
    """Tells an actor's worker to exit at once."""

    reason: str


@_message(57)
class CancelTask(Message):
    """Cancel a task pushed to this worker: KeyboardInterrupt, or exit when ``force``."""

    task_id: bytes
    force: bool
    recursive: bool


@_message(55)
class DefineFunctions(Message):
    """Pickled functions ``[[function_id, name, blob], ...]`` sent ahead of the first task."""

    functions: list


# --- placement groups (gcs.placement_groups, raylet.bundles) --------------------------------


@_message(130)
class CreatePlacementGroup(Message):
    """A new placement group (``bundles``: resource dicts; ``strategy``: PACK, SPREAD,
    STRICT_PACK or STRICT_SPREAD). ValueError for bad bundles or a taken name."""

    pg_id: bytes
    bundles: list
    strategy: str
    name: str
    namespace: str
    detached: bool
    job_id: int


@_message(131)
class RemovePlacementGroup(Message):
    pg_id: bytes


@_message(132)
class WaitPlacementGroup(Message):
    """Answered with the group's record once it is CREATED or REMOVED, or None after
    ``timeout`` seconds."""

    pg_id: bytes
    timeout: float


@_message(133)
class GetPlacementGroup(Message):
    """The record of the group ``pg_id``, or (``pg_id`` empty) of the one named ``name``."""

    pg_id: bytes
    name: str = ""
    namespace: str = ""


@_message(134)
class ListPlacementGroups(Message):
    pass


@_message(135)
class PrepareBundles(Message):
    """GCS to raylet: take these bundles' resources (``[[index, resources], ...]``) for the
    attempt, all or none (and ``commit`` them at once); answered True or False."""

    pg_id: bytes
    attempt: int
    bundles: list
    commit: bool = False


@_message(136)
class CommitBundles(Message):
    """GCS to raylet: make the attempt's prepared bundles usable; answered True or False."""

    pg_id: bytes
    attempt: int
    indices: list


@_message(137)
class ReturnBundles(Message):
    """GCS to raylet: give back what the group holds here for the attempt (-1: all of it);
    work using it is killed."""

    pg_id: bytes
    attempt: int
