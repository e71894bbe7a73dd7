"""Values to bytes and back: cloudpickle with pickle protocol 5 out-of-band buffers.

A serialized object is its pickle stream plus the raw buffers (numpy arrays, bytes-likes) the
pickler handed out of band, plus the ObjectRefs found inside it. Small objects travel inline in
messages as ``[kind, pickle, [buffer, ...]]``; large ones are written to the node's shared-memory
arena in the layout below and read back as views of that memory, so a numpy array read on the
same node is a read-only, zero-copy view.

Arena layout of one object (all integers little-endian)::

    u32 kind | u32 buffer count | u64 pickle length | u64 length of each buffer ...
    pickle bytes | padding to 64 | buffer 0 | padding to 64 | buffer 1 ...

Code objects pickled by value keep the file they were written in (cloudpickle 3.1.3 and later
name it ``"<dynamic-code>"``), so a remote traceback names the user's file and line. Code from a
source that exists only in this process's ``linecache`` (a notebook cell) carries its lines,
which the unpickling process registers in its own ``linecache`` to show them in tracebacks.
"""

from __future__ import annotations

import io
import linecache
import pickle
import struct
import threading
import types
from collections import ChainMap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

__all__ = [
    "INLINE_THRESHOLD",
    "KIND_ERROR",
    "KIND_VALUE",
    "SerializedObject",
    "deserialize_inline",
    "deserialize_view",
    "serialize",
]

INLINE_THRESHOLD = 100 * 1024
KIND_VALUE = 0
KIND_ERROR = 1
_ALIGN = 64
_HEAD = struct.Struct("<IIQ")
_LEN = struct.Struct("<Q")

_context = threading.local()


def _pad(n: int) -> int:
    return (-n) % _ALIGN


_reduce_code_by_value = cloudpickle.Pickler.dispatch_table[types.CodeType]


def _reduce_code(code: types.CodeType) -> tuple:
    """cloudpickle's reduction of a code object, plus its file name and in-memory source."""
    rebuild, args = _reduce_code_by_value(code)
    filename = code.co_filename
    entry = linecache.cache.get(filename)
    # linecache entries without an mtime are sources that exist in memory only.
    lines = entry[2] if entry is not None and len(entry) == 4 and entry[1] is None else None
    return _rebuild_code, (rebuild, args, filename, lines)


def _rebuild_code(rebuild: Callable, args: tuple, filename: str,
                  lines: list[str] | None) -> types.CodeType:
    """Unpickle a code object under its own file name; register source shipped with it."""
    code = rebuild(*args)
    if code.co_filename != filename:
        code = code.replace(co_filename=filename)
    if lines is not None and filename not in linecache.cache:
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    return code


class _Pickler(cloudpickle.Pickler):
    """cloudpickle's pickler whose code objects keep their file name (see the module doc)."""

    dispatch_table = ChainMap({types.CodeType: _reduce_code},
                              *cloudpickle.Pickler.dispatch_table.maps)


def _dumps(value: Any, buffer_callback: Callable | None = None) -> bytes:
    with io.BytesIO() as file:
        _Pickler(file, protocol=5, buffer_callback=buffer_callback).dump(value)
        return file.getvalue()


@dataclass(slots=True)
class SerializedObject:
    """The result of ``serialize``: ready to go inline or into the arena."""

    kind: int
    pickled: bytes
    buffers: list[memoryview]
    contained_refs: list[Any] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Bytes this object takes in the arena."""
        n = _HEAD.size + _LEN.size * len(self.buffers) + len(self.pickled)
        for buf in self.buffers:
            n += _pad(n) + buf.nbytes
        return n

    def inline(self) -> list:
        """The msgpack-able form carried inside messages."""
        return [self.kind, self.pickled, [bytes(b) for b in self.buffers]]

    def chunks(self) -> list[bytes | memoryview]:
        """The arena layout as a list of chunks to copy consecutively."""
        head = _HEAD.pack(self.kind, len(self.buffers), len(self.pickled))
        head += b"".join(_LEN.pack(b.nbytes) for b in self.buffers)
        out: list[bytes | memoryview] = [head, self.pickled]
        n = len(head) + len(self.pickled)
        for buf in self.buffers:
            pad = _pad(n)
            if pad:
                out.append(bytes(pad))
            out.append(buf)
            n += pad + buf.nbytes
        return out


def record_contained_ref(ref: Any) -> None:
    """Called by ``ObjectRef.__reduce__``: notes a ref found inside the value being pickled."""
    refs = getattr(_context, "refs", None)
    if refs is not None:
        refs.append(ref)


def serialize(value: Any, kind: int = KIND_VALUE, out_of_band: bool = True) -> SerializedObject:
    """Pickle ``value``, large buffers out of band unless told not to; raises what pickling
    raises."""
    buffers: list[memoryview] = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        if not out_of_band:
            return True
        view = buf.raw()
        if view.nbytes < 1024:  # small buffers are cheaper in band
            return True
        buffers.append(view)
        return False

    outer = getattr(_context, "refs", None)
    _context.refs = refs = []
    try:
        pickled = _dumps(value, keep)
    finally:
        _context.refs = outer
    return SerializedObject(kind, pickled, buffers, refs)


def deserialize_inline(payload: list) -> tuple[int, Any]:
    """Rebuild ``(kind, value)`` from the inline form."""
    kind, pickled, buffers = payload
    return kind, pickle.loads(pickled, buffers=buffers)


def deserialize_view(view: memoryview) -> tuple[int, Any]:
    """Rebuild ``(kind, value)`` from an arena view; buffers stay views of that memory."""
    kind, count, pickled_len = _HEAD.unpack_from(view, 0)
    pos = _HEAD.size
    lengths = [_LEN.unpack_from(view, pos + i * _LEN.size)[0] for i in range(count)]
    pos += _LEN.size * count
    pickled = view[pos : pos + pickled_len]
    pos += pickled_len
    buffers = []
    for length in lengths:
        pos += _pad(pos)
        buffers.append(view[pos : pos + length])
        pos += length
    return kind, pickle.loads(pickled, buffers=buffers)


def find_unserializable(named_values: list[tuple[str, Any]]) -> tuple[str, Exception] | None:
    """The first ``(name, error)`` among values that cannot be pickled, if any."""
    for name, value in named_values:
        try:
            _dumps(value, lambda b: False)
        except Exception as exc:
            return name, exc
    return None


def dumps_function(fn: Callable) -> bytes:
    """Pickle a function or class by value for export to workers."""
    return _dumps(fn)
