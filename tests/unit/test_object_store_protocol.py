"""The node's object store under any order of its clients' messages (hypothesis).

Creators allocate, write and seal; readers locate (pin) and unpin in any order, also after
the owner released the object; connections drop; the store spills and restores. Whatever the
order: a block is never freed while a reader holds a pin, a located
object is sealed and the answer is where its block is, freed space is accounted exactly, and
once every pin and every owner is gone the store is empty.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cellfleet.exceptions import ObjectStoreFullError
from cellfleet.raylet.object_store import ObjectStore

MiB = 2**20
OBJECTS = [bytes([i]) * 20 for i in range(4)]
READERS = ["r1", "r2", "creator"]

STEP = st.one_of(
    st.tuples(st.just("allocate"), st.integers(0, 3), st.integers(1, 24)),
    st.tuples(st.just("seal"), st.integers(0, 3)),
    st.tuples(st.just("locate"), st.integers(0, 3), st.sampled_from(READERS)),
    st.tuples(st.just("unpin"), st.integers(0, 3), st.sampled_from(READERS)),
    st.tuples(st.just("release"), st.integers(0, 3)),
    st.tuples(st.just("gone"), st.sampled_from(READERS)),
    st.tuples(st.just("spill"), st.integers(1, 48)),
    st.tuples(st.just("restore"), st.integers(0, 3)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(STEP, max_size=60))
def test_the_store_stays_consistent_under_any_order_of_messages(steps):
    store = ObjectStore(64 * MiB)
    pins: dict[tuple[bytes, str], int] = {}  # what each reader holds, as the reader counts

    def check() -> None:
        used = sum(obj.size for obj in store.objects.values())
        assert store.allocator.used >= used  # blocks are 4 KiB-aligned: at least the sizes
        for object_id, obj in store.objects.items():
            for reader, count in obj.readers.items():
                if reader != "spiller":
                    assert pins.get((object_id, reader), 0) == count
        for (object_id, reader), count in pins.items():
            if count:
                obj = store.objects.get(object_id)
                assert obj is not None, "freed while a reader holds a pin"
                assert obj.readers.get(reader) == count

    for step in steps:
        kind = step[0]
        if kind == "allocate":
            object_id = OBJECTS[step[1]]
            if object_id not in store.objects and object_id not in store.spilled:
                try:
                    store.allocate(object_id, step[2] * MiB, "owner", writer="creator")
                except ObjectStoreFullError:
                    pass
        elif kind == "seal":
            store.seal(OBJECTS[step[1]])
        elif kind == "locate":
            object_id, reader = OBJECTS[step[1]], step[2]
            (where,) = store.locate(reader, [object_id])
            if isinstance(where, list):
                obj = store.objects[object_id]
                assert obj.sealed and where == [obj.offset, obj.size]
                pins[(object_id, reader)] = pins.get((object_id, reader), 0) + 1
        elif kind == "unpin":
            key = (OBJECTS[step[1]], step[2])
            if pins.get(key):
                pins[key] -= 1
                store.unpin(step[2], [key[0]])
        elif kind == "release":
            store.release([OBJECTS[step[1]]])
        elif kind == "gone":
            store.reader_gone(step[1])
            for key in list(pins):
                if key[1] == step[1]:
                    pins[key] = 0
        elif kind == "spill":
            for object_id in store.spill_candidates(step[1] * MiB):
                store.spilled_out(object_id, f"/spill/{object_id.hex()}")
        else:
            object_id = OBJECTS[step[1]]
            if object_id in store.spilled:
                try:
                    store.restoring(object_id)
                except ObjectStoreFullError:
                    pass
        check()
    for reader in READERS:
        store.reader_gone(reader)
    store.owner_gone("owner")
    store.take_spill_deletions()
    assert store.objects == {} and store.spilled == {} and store.allocator.used == 0
