"""The owner's object directory: which other nodes hold copies of its objects.

Ray's ownership-based object directory. An object in shared memory has its primary copy on
the node that made it (its payload names that node); a raylet that pulls a copy keeps it as a
*secondary* and tells the owner (``ObjectLocationAdded``), and tells it again when it evicts
the copy (``ObjectLocationRemoved``). Readers the owner sends to a node get every holder it
knows, so their raylet pulls from all of them, and a reader still finds a copy when the node
with the primary is gone.

A payload of an object in shared memory is ``["s", kind, size, node_id, raylet_address,
owner]``; what the owner hands readers (``share``) adds the secondary copies' raylets, and a
reader's ``GetObjects`` names them all (``pull_source``).

The directory has no I/O: the owner feeds it those messages, node deaths (the GCS's ``exits``
channel: ``host:*``) and frees, and carries out what it answers (free a copy at a raylet).
Messages on different connections arrive in any order, so:

- a copy announced for an object the owner no longer has (freed, or being made again) is
  answered "free it there", so no copy outlives its object;
- a copy announced by a raylet whose node was already reported dead is not kept (a node that
  comes back on the same host listens on another port, so its raylet is a new address).
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["MAX_DEAD", "MAX_LOCATIONS", "ObjectDirectory", "pull_source"]

MAX_LOCATIONS = 64  # secondary copies remembered per object (readers need a few, not all)
MAX_DEAD = 1_000  # raylets of dead nodes remembered, as the GCS bounds its dead nodes


def _host(address: str) -> str:
    return address.rpartition(":")[0]


class ObjectDirectory:
    """Secondary copies of the objects one process owns, by object id."""

    def __init__(self) -> None:
        # object id -> {raylet address: node id}, in the order the copies were announced.
        self.locations: dict[bytes, dict[str, bytes]] = {}
        self._dead: OrderedDict[str, None] = OrderedDict()  # raylet addresses

    def added(self, object_id: bytes, node_id: bytes, address: str, live: bool) -> list[str]:
        """A raylet holds a copy now; ``live``: the owner still has the object in shared
        memory. Returns the raylet addresses whose copy to free (this one, if not kept)."""
        if not live or address in self._dead:
            return [address]
        copies = self.locations.setdefault(object_id, {})
        if address not in copies and len(copies) >= MAX_LOCATIONS:
            return [address]
        copies[address] = node_id
        return []

    def removed(self, object_id: bytes, address: str) -> None:
        """The raylet at ``address`` let its copy go."""
        copies = self.locations.get(object_id)
        if copies is not None:
            copies.pop(address, None)
            if not copies:
                del self.locations[object_id]

    def node_died(self, pattern: str) -> list[bytes]:
        """A process exited (``host:port``) or a whole node (``host:*``): a node's copies
        went with it. Returns the objects that lost copies."""
        if not pattern.endswith(":*"):
            return []
        host = pattern[:-2]
        changed = []
        for object_id in list(self.locations):
            copies = self.locations[object_id]
            gone = [a for a in copies if _host(a) == host]
            for address in gone:
                del copies[address]
                self._dead[address] = None
            if gone:
                changed.append(object_id)
            if not copies:
                del self.locations[object_id]
        while len(self._dead) > MAX_DEAD:
            self._dead.popitem(last=False)
        return changed

    def holders(self, object_id: bytes, exclude: str = "") -> list[str]:
        """Raylet addresses of the secondary copies, but ``exclude`` (the reader's own)."""
        copies = self.locations.get(object_id)
        if not copies:
            return []
        return [address for address in copies if address != exclude]

    def copies(self, object_id: bytes) -> list[str]:
        """Hex ids of the nodes with a secondary copy (for the state API and dashboard)."""
        return [node_id.hex() for node_id in self.locations.get(object_id, {}).values()]

    def share(self, object_id: bytes, payload: list | None) -> list | None:
        """``payload`` as a reader gets it: with the raylets of the secondary copies."""
        copies = self.locations.get(object_id)
        if not copies or payload is None or payload[0] != "s":
            return payload
        return [*payload[:6], list(copies)]

    def forget(self, object_id: bytes) -> list[str]:
        """The owner freed the object: the raylets whose copies to free."""
        return list(self.locations.pop(object_id, {}))


def pull_source(payload: list, here: str) -> list:
    """``GetObjects``' entry for an object whose primary copy is on another node: the
    primary's raylet, the size, the owner, then the raylets of other copies but ``here``."""
    primary = payload[4]
    more = payload[6] if len(payload) > 6 else ()
    return [primary, payload[2], payload[5] if len(payload) > 5 else "",
            *(address for address in more if address not in (here, primary))]
