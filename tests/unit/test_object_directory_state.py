"""The owner's object directory (``core/object_directory.py``) fed copies, evictions, node
deaths and frees in any order, as the messages of several raylets and the GCS interleave."""

from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from cellfleet.core.object_directory import MAX_LOCATIONS, ObjectDirectory, pull_source

OBJECTS = [b"o1", b"o2", b"o3"]
HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


def test_a_copy_is_known_until_evicted_and_its_raylet_freed_with_the_object():
    directory = ObjectDirectory()
    assert directory.added(b"o", b"n2", "127.0.0.2:7", live=True) == []
    assert directory.added(b"o", b"n3", "127.0.0.3:7", live=True) == []
    assert directory.holders(b"o", exclude="127.0.0.3:7") == ["127.0.0.2:7"]
    directory.removed(b"o", "127.0.0.2:7")
    assert directory.holders(b"o") == ["127.0.0.3:7"]
    assert directory.forget(b"o") == ["127.0.0.3:7"]
    assert directory.locations == {}


def test_a_copy_of_an_object_already_freed_is_freed_where_it_is():
    directory = ObjectDirectory()
    assert directory.added(b"o", b"n2", "127.0.0.2:7", live=False) == ["127.0.0.2:7"]
    assert directory.locations == {}


def test_a_dead_node_takes_its_copies_and_its_late_announcements_are_refused():
    directory = ObjectDirectory()
    directory.added(b"o", b"n2", "127.0.0.2:7", live=True)
    directory.added(b"o", b"n3", "127.0.0.3:7", live=True)
    directory.node_died("127.0.0.2:5555")  # one process of the node: nothing changes
    assert directory.holders(b"o") == ["127.0.0.2:7", "127.0.0.3:7"]
    directory.node_died("127.0.0.2:*")
    assert directory.holders(b"o") == ["127.0.0.3:7"]
    assert directory.added(b"p", b"n2", "127.0.0.2:7", live=True) == ["127.0.0.2:7"]
    assert directory.added(b"p", b"n2", "127.0.0.2:8", live=True) == []  # a new raylet there


def test_copies_per_object_are_bounded():
    directory = ObjectDirectory()
    for i in range(MAX_LOCATIONS):
        assert directory.added(b"o", b"n", f"10.0.0.{i}:7", live=True) == []
    assert directory.added(b"o", b"n", "10.0.1.1:7", live=True) == ["10.0.1.1:7"]
    assert len(directory.holders(b"o")) == MAX_LOCATIONS


def test_readers_get_every_holder_but_their_own_node():
    directory = ObjectDirectory()
    payload = ["s", 0, 100, b"n1", "127.0.0.1:1", "owner:9"]
    assert directory.share(b"o", payload) == payload
    directory.added(b"o", b"n2", "127.0.0.2:2", live=True)
    directory.added(b"o", b"n3", "127.0.0.3:3", live=True)
    shared = directory.share(b"o", payload)
    assert shared == [*payload, ["127.0.0.2:2", "127.0.0.3:3"]]
    assert pull_source(shared, "127.0.0.3:3") == ["127.0.0.1:1", 100, "owner:9", "127.0.0.2:2"]
    assert pull_source(payload, "127.0.0.3:3") == ["127.0.0.1:1", 100, "owner:9"]
    assert directory.share(b"o", ["i", [0, b"", []]]) == ["i", [0, b"", []]]


step = st.one_of(
    st.tuples(st.just("pull"), st.sampled_from(OBJECTS), st.sampled_from(HOSTS)),
    st.tuples(st.just("evict"), st.sampled_from(OBJECTS), st.sampled_from(HOSTS)),
    st.tuples(st.just("deliver"), st.sampled_from(HOSTS)),
    st.tuples(st.just("deliver_gcs")),
    st.tuples(st.just("node_dies"), st.sampled_from(HOSTS)),
    st.tuples(st.just("node_starts"), st.sampled_from(HOSTS)),
    st.tuples(st.just("free"), st.sampled_from(OBJECTS)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(step, max_size=60))
def test_in_any_order_no_copy_outlives_its_object_and_every_live_copy_is_known(steps):
    """Raylets' messages to the owner keep their order per raylet (one connection each);
    the GCS's death notices come on their own, at any time (before a node that comes back on
    the same host starts: they name the host only). Once everything is delivered:
    no copy of a freed object is left anywhere, every copy on a live node of a live object
    is in the directory, and the directory names no live raylet that lacks a copy."""
    directory = ObjectDirectory()
    port = {host: 1 for host in HOSTS}  # a node that comes back listens on a new port
    alive = {f"{host}:1" for host in HOSTS}
    copies: set[tuple[bytes, str]] = set()  # (object, raylet): what the stores really hold
    freed: set[bytes] = set()
    to_owner = {host: deque() for host in HOSTS}  # per host: its raylets' messages, in order
    from_gcs: deque[str] = deque()

    def owner_frees_at(object_id: bytes, addresses: list[str]) -> None:
        for address in addresses:  # FreeObjects to that raylet: its copy goes
            copies.discard((object_id, address))

    def deliver(message: tuple) -> None:
        kind, object_id, address = message
        if kind == "added":
            live = object_id not in freed
            owner_frees_at(object_id, directory.added(object_id, b"n", address, live))
        else:
            directory.removed(object_id, address)

    for action, *args in steps:
        if action == "pull":
            object_id, host = args
            address = f"{host}:{port[host]}"
            if address in alive and object_id not in freed and (object_id, address) not in copies:
                copies.add((object_id, address))
                to_owner[host].append(("added", object_id, address))
        elif action == "evict":
            object_id, host = args
            address = f"{host}:{port[host]}"
            if (object_id, address) in copies:
                copies.discard((object_id, address))
                to_owner[host].append(("removed", object_id, address))
        elif action == "deliver" and to_owner[args[0]]:
            deliver(to_owner[args[0]].popleft())
        elif action == "deliver_gcs" and from_gcs:
            directory.node_died(from_gcs.popleft())
        elif action == "node_dies":
            host = args[0]
            address = f"{host}:{port[host]}"
            if address in alive:
                alive.discard(address)
                copies -= {c for c in copies if c[1] == address}
                from_gcs.append(f"{host}:*")
        elif action == "node_starts":  # after its death was published (it takes seconds)
            host = args[0]
            if f"{host}:{port[host]}" not in alive and f"{host}:*" not in from_gcs:
                port[host] += 1
                alive.add(f"{host}:{port[host]}")
        elif action == "free":
            object_id = args[0]
            if object_id not in freed:
                freed.add(object_id)
                owner_frees_at(object_id, directory.forget(object_id))
    for host in HOSTS:
        while to_owner[host]:
            deliver(to_owner[host].popleft())
    while from_gcs:
        directory.node_died(from_gcs.popleft())

    assert not {c for c in copies if c[0] in freed}, "a copy outlived its object"
    known = {(o, a) for o, where in directory.locations.items() for a in where}
    assert not {o for o, _ in known} & freed
    for object_id, address in copies:
        assert (object_id, address) in known, "a live copy the owner does not know of"
    for object_id, address in known:
        if address in alive:
            assert (object_id, address) in copies, "a location with no copy"
