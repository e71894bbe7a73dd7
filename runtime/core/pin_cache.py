"""This process's pins on objects in its node's store, kept a moment past their last view.

A read asks the raylet where an object is, and the raylet pins it for this process first. A
``get`` loop over one object (or a task reading the same argument again) would pay that round
trip every time; instead the pin outlives its last view by ``GRACE_S``, and a read within the
grace maps the object again at once. Held pins keep objects from being spilled, so the raylet
retries a spill after the grace when only such pins are in its way. No I/O: the core worker
sends the unpins and runs the timers this class asks for.
"""

from __future__ import annotations

import threading

__all__ = ["GRACE_S", "PinCache"]

GRACE_S = 0.25  # how long a pin outlives the last view of its object


class PinCache:
    """Pinned objects by id: ``[offset, size, live views, generation]``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[bytes, list[int]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def take(self, object_id: bytes) -> list[int] | None:
        """``[offset, size]`` of an object this process holds a pin on, counting one more
        view; None when the raylet must be asked."""
        with self._lock:
            held = self._held.get(object_id)
            if held is None:
                return None
            held[2] += 1
            return held[:2]

    def add(self, object_id: bytes, where: list[int]) -> bool:
        """The raylet pinned the object for one view; False if a pin was held already (the
        new one is then one too many: unpin it)."""
        with self._lock:
            held = self._held.get(object_id)
            if held is not None:
                held[2] += 1
                return False
            self._held[object_id] = [where[0], where[1], 1, 0]
            return True

    def released(self, object_id: bytes) -> int | None:
        """A view went; the generation to expire the pin at once no view is left, else None."""
        with self._lock:
            held = self._held.get(object_id)
            if held is None:
                return None
            held[2] -= 1
            if held[2] > 0:
                return None
            held[3] += 1
            return held[3]

    def views(self) -> dict[bytes, int]:
        """Object id -> zero-copy views of it alive in this process (held pins only)."""
        with self._lock:
            return {object_id: held[2] for object_id, held in self._held.items() if held[2]}

    def expire(self, object_id: bytes, generation: int) -> bool:
        """The grace passed: True if the pin goes now (no view came back meanwhile)."""
        with self._lock:
            held = self._held.get(object_id)
            if held is None or held[2] > 0 or held[3] != generation:
                return False
            del self._held[object_id]
            return True
