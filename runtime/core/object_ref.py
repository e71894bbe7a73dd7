"""``ObjectRef``: a future naming an object and the process that owns it."""

from __future__ import annotations

from typing import Any

from .. import _context
from .._ids import object_id_for, random_id

__all__ = ["ObjectID", "ObjectRef"]

# An id made here (a task id and a return index), and Ray's, which ObjectRef(id) also takes.
ID_LENGTHS = (len(object_id_for(bytes(16), 0)), 28)


class ObjectRef:
    """A reference to an object somewhere in the cluster, as returned by ``.remote()``/``put``.

    While any ``ObjectRef`` to an object exists in any process (or inside another live object),
    the object is kept; when the last one goes, its owner frees it.
    """

    __slots__ = ("_id", "_owner", "_core", "__weakref__")

    def __init__(self, object_id: bytes, owner: str = "", *, _add_ref: bool = True) -> None:
        self._id = object_id
        self._owner = owner
        core = _context.core
        self._core = core
        if type(object_id) is not bytes:
            self._core = None
            raise TypeError(f"ObjectRef takes the object's id as bytes, got "
                            f"{type(object_id).__name__}")
        if not owner and len(object_id) not in ID_LENGTHS:
            raise ValueError(f"ObjectRef(id): the id needs to have length {ID_LENGTHS[0]} "
                             f"(or Ray's {ID_LENGTHS[1]}), got {len(object_id)} bytes")
        if _add_ref and core is not None and owner:  # ObjectRef(id) alone owns nothing
            core.refs.add_local_ref(object_id, owner)

    def __del__(self) -> None:
        core = self._core
        if core is not None and self._owner:
            core.refs.release_local_ref(self._id)

    # -- identity -------------------------------------------------------------------------

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self) -> str:
        return self._id[:16].hex()

    def owner_address(self) -> str:
        return self._owner

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __reduce__(self):
        from .._serialization import record_contained_ref

        record_contained_ref(self)
        return ObjectRef, (self._id, self._owner)  # counted here as a local ref (or borrow)

    # -- futures --------------------------------------------------------------------------

    def future(self) -> Any:
        """A ``concurrent.futures.Future`` resolved with the object's value."""
        return self._core.value_future(self)

    def as_future(self) -> Any:
        """An ``asyncio.Future`` (of the running loop) resolved with the object's value."""
        import asyncio

        return asyncio.wrap_future(self.future())

    def _on_completed(self, callback: Any) -> None:
        """Call ``callback(value)`` once the object is ready (with the error if it failed)."""

        def done(future: Any) -> None:
            error = future.exception()
            callback(error if error is not None else future.result())

        self.future().add_done_callback(done)

    def is_nil(self) -> bool:
        return not any(self._id)

    @classmethod
    def nil(cls) -> ObjectRef:
        """The all-zero id, naming no object (Ray's ``ObjectRef.nil()``)."""
        return cls(object_id_for(bytes(16), 0))

    @classmethod
    def from_random(cls) -> ObjectRef:
        """A ref with a random id that names no object and owns nothing."""
        return cls(object_id_for(random_id(), 0))

    def __await__(self):
        import asyncio

        return asyncio.wrap_future(self.future()).__await__()


ObjectID = ObjectRef  # Ray's former name, kept as an alias (as Ray keeps it)
