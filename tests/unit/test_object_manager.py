"""The object manager's pull as a state class: which lane asks for which chunks, what a failed
lane gives back, when a copy is whole; and the store's secondary copies."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellfleet.raylet.object_manager import Pull
from cellfleet.raylet.object_store import ObjectStore


def test_a_pull_keeps_its_window_of_chunks_in_flight_per_lane_and_ends_with_the_last():
    pull = Pull(b"o", 10, ["peer"], 0, chunk=3, window=2)
    assert pull.lanes() == ["peer", "peer"]  # two connections even to one holder
    assert pull.next_chunks(1, "peer") == [(0, 3), (3, 3)]
    assert pull.next_chunks(1, "peer") == []  # the window is full
    assert pull.next_chunks(2, "peer") == [(6, 3), (9, 1)]
    assert not pull.chunk_arrived(1, 3)
    assert not pull.chunk_arrived(2, 9)
    assert not pull.chunk_arrived(1, 0)
    assert pull.lane_done(1) and not pull.lane_done(2)
    assert pull.chunk_arrived(2, 6) and pull.whole
    with pytest.raises(ValueError, match="was not asked for"):
        pull.chunk_arrived(2, 6)


def test_lanes_go_to_every_holder_and_never_outnumber_the_chunks():
    assert Pull(b"o", 100, ["a", "b", "c"], 0, chunk=10).lanes() == ["a", "b", "c"]
    assert Pull(b"o", 100, list("abcdef"), 0, chunk=10).lanes() == list("abcd")  # MAX_LANES
    assert Pull(b"o", 5, ["a", "b"], 0, chunk=10).lanes() == ["a"]  # one chunk
    with pytest.raises(ValueError, match="needs a holder"):
        Pull(b"o", 5, [], 0)


def test_a_failed_lane_gives_its_chunks_back_to_another_holder():
    pull = Pull(b"o", 12, ["a", "b"], 0, chunk=3, window=2)
    assert pull.next_chunks(1, "a") == [(0, 3), (3, 3)]
    assert pull.next_chunks(2, "b") == [(6, 3), (9, 3)]
    assert not pull.chunk_arrived(1, 0)
    pull.lane_failed(1, "a")  # "a" died with the chunk at 3 in flight
    assert pull.live_holders() == ["b"] and pull.next_chunks(3, "a") == []
    assert not pull.chunk_arrived(2, 6)
    assert pull.next_chunks(2, "b") == [(3, 3)]
    assert not pull.chunk_arrived(2, 9)
    assert pull.chunk_arrived(2, 3)
    pull.lane_failed(2, "b")
    assert pull.lanes() == []  # no holder left: had it not been whole, the pull would fail


def test_a_lane_whose_connection_went_stale_gives_its_chunks_back_and_keeps_its_holder():
    pull = Pull(b"o", 6, ["a"], 0, chunk=3, window=2)
    assert pull.next_chunks(1, "a") == [(0, 3), (3, 3)]
    pull.lane_failed(1, "a", holder_failed=False)  # an idle pooled connection had gone
    assert pull.lanes() == ["a", "a"] and pull.next_chunks(2, "a") == [(0, 3), (3, 3)]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10_000), st.integers(1, 999), st.integers(1, 6), st.integers(1, 4),
       st.randoms())
def test_chunks_arriving_in_any_order_while_lanes_fail_cover_the_object_exactly_once(
        size, chunk, window, holders, rng):
    """Lanes ask, receive in any order, and fail (all but the last holder may); new lanes
    start when none runs, as ``chunk_channel.pull_object`` does."""
    names = [f"h{i}" for i in range(holders)]
    pull = Pull(b"o", size, names, 0, chunk=chunk, window=window)
    covered = bytearray(size)
    running: dict[int, str] = {}
    next_lane = 0
    while not pull.whole:
        if not running:
            lanes = pull.lanes()
            assert lanes, "a holder is left, so lanes must run"
            for holder in lanes:
                running[next_lane] = holder
                next_lane += 1
        lane = rng.choice(sorted(running))
        holder = running[lane]
        pull.next_chunks(lane, holder)
        mine = list(pull.in_flight.get(lane, {}).items())
        assert len(mine) <= window
        if mine and len(pull.live_holders()) > 1 and rng.random() < 0.1:
            pull.lane_failed(lane, holder)
            del running[lane]
            continue
        if not mine:
            assert pull.lane_done(lane) or holder in pull.failed
            del running[lane]
            continue
        offset, n = mine[rng.randrange(len(mine))]
        for i in range(offset, offset + n):
            covered[i] += 1
        pull.chunk_arrived(lane, offset)
    assert covered == bytearray([1]) * size


def test_a_failed_pull_gives_its_space_back():
    store = ObjectStore(64 << 20)
    store.allocate(b"copy", 8 << 20, "")
    store.drop_unsealed(b"copy")
    assert store.objects == {} and store.allocator.used == 0
    store.allocate(b"sealed", 1 << 20, "")
    store.seal(b"sealed")
    store.drop_unsealed(b"sealed")
    assert b"sealed" in store.objects  # a whole object is never dropped this way


def test_secondary_copies_nobody_reads_are_evicted_before_any_primary_is_spilled():
    store = ObjectStore(40 << 20)
    store.allocate(b"primary", 10 << 20, "owner:1")
    store.allocate(b"old", 10 << 20, "owner:1", secondary=True)
    store.allocate(b"read", 10 << 20, "owner:2", secondary=True)
    for object_id in (b"primary", b"old", b"read"):
        store.seal(object_id)
    store.pulled(b"old"), store.pulled(b"read")  # the pulls of the two copies are done
    store.locate("reader", [b"read"])
    assert store.spill_candidates(20 << 20) == [b"primary"]  # never a secondary copy
    store.spilled_out(b"primary", None)  # could not be written: it stays
    evicted, ranges = store.evict(20 << 20)
    assert evicted == [(b"old", "owner:1")] and ranges  # the pinned copy stays
    assert set(store.objects) == {b"primary", b"read"}
    assert store.evict(20 << 20) == ([], [])
    store.unpin("reader", [b"read"])
    assert b"read" in store.objects  # unread, a secondary copy stays until evicted or freed
    store.release([b"read"])
    assert set(store.objects) == {b"primary"}


def test_a_copy_being_pulled_is_never_freed_under_the_pull():
    store = ObjectStore(64 << 20)
    offset = store.allocate(b"copy", 8 << 20, "owner:1", secondary=True)
    assert store.owner_gone("owner:1") == [] and b"copy" in store.objects  # mid-pull
    assert store.evict(64 << 20) == ([], [])
    assert store.allocate(b"other", 8 << 20, "owner:2") != offset  # its block stays taken
    store.seal(b"copy")
    assert store.pulled(b"copy") and b"copy" not in store.objects  # freed once whole
