"""The raylet's object store as a state class: which freed ranges go back to the system."""

from __future__ import annotations

from cellfleet._messages import ALREADY_STORED
from cellfleet.raylet.object_store import RECLAIM_MIN_BYTES, ObjectStore

MiB = 2**20


def test_freeing_a_large_object_answers_its_range_to_give_back() -> None:
    store = ObjectStore(64 * MiB)
    offset = store.allocate(b"big", 8 * MiB, "owner")
    store.seal(b"big")
    assert store.locate("reader", [b"big"]) == [[offset, 8 * MiB]]
    assert store.release([b"big"]) == []  # still mapped by a reader: nothing freed yet
    ((start, size),) = store.unpin("reader", [b"big"])
    assert start <= offset and size >= 8 * MiB and store.allocator.used == 0


def test_small_frees_keep_their_pages_until_a_large_one_frees_next_to_them() -> None:
    store = ObjectStore(4 * RECLAIM_MIN_BYTES)
    store.allocate(b"a", RECLAIM_MIN_BYTES // 4, "o")
    store.allocate(b"b", RECLAIM_MIN_BYTES // 4, "o")
    store.allocate(b"rest", 3 * RECLAIM_MIN_BYTES, "o")  # no free space left after these
    store.allocate(b"tail", store.allocator.available, "o")
    assert store.release([b"a"]) == []
    assert store.release([b"b"]) == []  # a and b together: half the threshold
    assert store.release([b"rest"]) == [(0, RECLAIM_MIN_BYTES // 2 + 3 * RECLAIM_MIN_BYTES)]


def test_an_exiting_owner_frees_its_objects_and_answers_their_ranges() -> None:
    store = ObjectStore(64 * MiB)
    store.allocate(b"x", 8 * MiB, "dead-owner")
    store.allocate(b"y", 8 * MiB, "live-owner")
    ranges = store.owner_gone("dead-owner")
    assert len(ranges) == 1 and list(store.objects) == [b"y"]


def test_a_retried_return_larger_than_the_first_attempt_gets_a_block_of_its_own() -> None:
    """The first attempt's smaller block is given up, never written past into a neighbour."""
    store = ObjectStore(64 * MiB)
    first = store.allocate(b"ret", 1 * MiB, "owner")
    neighbour = store.allocate(b"next", 1 * MiB, "owner")
    again = store.allocate(b"ret", 4 * MiB, "owner")
    assert not (again < neighbour + MiB and neighbour < again + 4 * MiB), "overlaps neighbour"
    assert store.objects[b"ret"].size == 4 * MiB
    assert store.allocator.used == 5 * MiB
    assert store.allocate(b"ret", 4 * MiB, "owner") == again  # same size: same block
    assert first == 0


def test_a_return_this_node_holds_sealed_is_kept_not_written_again() -> None:
    """A re-run's output, or a retried attempt's, that the node has sealed already (its own,
    or a copy pulled here and being read) is kept: the writer is told there is nothing to do,
    and the copy becomes the primary one, its owner the writer's."""
    store = ObjectStore(64 * MiB)
    store.allocate(b"ret", 1 * MiB, "")
    store.seal(b"ret")
    store.objects[b"ret"].released = True  # a copy pulled here, gone once unread
    where = store.locate("reader", [b"ret"])
    assert store.allocate(b"ret", 2 * MiB, "owner") == ALREADY_STORED
    kept = store.objects[b"ret"]
    assert (kept.size, kept.owner, kept.released, kept.sealed) == (MiB, "owner", False, True)
    assert store.locate("reader", [b"ret"]) == where  # the reader's view is untouched
    assert store.allocator.used == MiB


def test_a_free_below_an_eighth_of_the_store_keeps_its_pages_for_reuse() -> None:
    store = ObjectStore(1024 * MiB)
    assert store.reclaim_min == 128 * MiB
    store.allocate(b"medium", 100 * MiB, "o")
    assert store.release([b"medium"]) == []  # the next 100 MB object reuses these pages
    store.allocate(b"large", 200 * MiB, "o")
    assert store.release([b"large"]) == [(0, 1024 * MiB)]


def test_readers_learn_where_an_object_is_only_once_it_is_sealed() -> None:
    store = ObjectStore(64 * MiB)
    offset = store.allocate(b"obj", MiB, "owner", writer="creator")
    assert store.locate("reader", [b"obj", b"other"]) == [False, None]
    assert store.objects[b"obj"].readers == {}  # nothing pinned for an unsealed object
    assert store.seal(b"obj") and not store.seal(b"other")
    assert store.locate("reader", [b"obj"]) == [[offset, MiB]]
    store.release([b"obj"])
    assert b"obj" in store.objects  # pinned by the reader
    store.unpin("reader", [b"obj"])
    assert store.objects == {}


def test_an_object_its_creator_left_unsealed_is_dropped_with_the_creator() -> None:
    store = ObjectStore(64 * MiB)
    store.allocate(b"torn", MiB, "owner", writer="creator")
    store.allocate(b"done", MiB, "owner", writer="creator")
    store.seal(b"done")
    store.reader_gone("creator")
    assert list(store.objects) == [b"done"] and store.allocator.used == MiB


def test_a_retried_write_after_the_first_attempt_sealed_keeps_the_first_copy() -> None:
    store = ObjectStore(64 * MiB)
    offset = store.allocate(b"ret", MiB, "owner", writer="attempt1")
    store.seal(b"ret")
    assert store.allocate(b"ret", MiB, "owner", writer="attempt2") == ALREADY_STORED
    assert store.locate("reader", [b"ret"]) == [[offset, MiB]]


def test_a_retried_write_of_the_same_size_reuses_an_unsealed_block() -> None:
    store = ObjectStore(64 * MiB)
    offset = store.allocate(b"ret", MiB, "owner", writer="attempt1")  # died before sealing
    assert store.allocate(b"ret", MiB, "owner", writer="attempt2") == offset
    assert store.locate("reader", [b"ret"]) == [False]


def test_spilling_picks_unread_primaries_largest_first_until_there_is_room() -> None:
    store = ObjectStore(64 * MiB)
    for name, size in ((b"small", 8), (b"big", 32), (b"read", 16), (b"gone", 8)):
        store.allocate(name, size * MiB, "owner")
        store.seal(name)
    store.locate("reader", [b"read"])
    store.release([b"gone"])  # freed at once: not a candidate
    assert store.spill_candidates(24 * MiB) == [b"big"]  # 8 free + 32 >= 24
    assert store.objects[b"big"].readers == {"spiller": 1}
    store.spilled_out(b"big", "/spill/big")
    assert b"big" not in store.objects and store.spilled[b"big"].path == "/spill/big"
    assert store.locate("reader", [b"big"]) == [False]  # known: ask again once restored
    offset, spilled = store.restoring(b"big")
    assert spilled.size == 32 * MiB and store.take_spill_deletions() == ["/spill/big"]
    assert store.locate("reader", [b"big"]) == [False]  # until its bytes are back
    store.seal(b"big")
    assert store.locate("reader", [b"big"]) == [[offset, 32 * MiB]]


def test_a_spill_a_reader_overtook_keeps_the_object_in_memory() -> None:
    store = ObjectStore(64 * MiB)
    store.allocate(b"obj", 32 * MiB, "owner")
    store.seal(b"obj")
    assert store.spill_candidates(48 * MiB) == [b"obj"]
    store.locate("reader", [b"obj"])  # mapped while its bytes were being written out
    store.spilled_out(b"obj", "/spill/obj")
    assert b"obj" in store.objects and not store.spilled
    assert store.take_spill_deletions() == ["/spill/obj"]


def test_freeing_a_spilled_object_or_its_owner_deletes_its_file() -> None:
    store = ObjectStore(64 * MiB)
    for name, owner in ((b"a", "one"), (b"b", "two")):
        store.allocate(name, 16 * MiB, owner)
        store.seal(name)
        store.spill_candidates(64 * MiB)
        store.spilled_out(name, f"/spill/{name.decode()}")
    store.release([b"a"])
    store.owner_gone("two")
    assert store.spilled == {} and sorted(store.take_spill_deletions()) == ["/spill/a",
                                                                            "/spill/b"]
