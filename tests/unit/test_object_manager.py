"""The object manager's pull as a state class: which chunks to ask for, when a copy is whole."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellfleet.raylet.object_manager import Pull
from cellfleet.raylet.object_store import ObjectStore


def test_a_pull_keeps_its_window_of_chunks_in_flight_and_ends_with_the_last():
    pull = Pull(b"o", 10, "peer", 0, chunk=3, window=2)
    assert pull.next_chunks() == [(0, 3), (3, 3)]
    assert pull.next_chunks() == []  # the window is full
    assert not pull.chunk_arrived(3, 3)
    assert pull.next_chunks() == [(6, 3)]
    assert not pull.chunk_arrived(0, 3)
    assert pull.next_chunks() == [(9, 1)]
    assert not pull.chunk_arrived(9, 1)
    assert pull.chunk_arrived(6, 3)
    with pytest.raises(ValueError, match="was not asked for"):
        pull.chunk_arrived(6, 3)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10_000), st.integers(1, 999), st.integers(1, 6), st.randoms())
def test_chunks_arriving_in_any_order_cover_the_object_exactly_once(size, chunk, window, rng):
    pull = Pull(b"o", size, "peer", 0, chunk=chunk, window=window)
    covered = bytearray(size)
    in_flight = pull.next_chunks()
    whole = False
    while in_flight:
        assert len(in_flight) <= window
        offset, n = in_flight.pop(rng.randrange(len(in_flight)))
        for i in range(offset, offset + n):
            covered[i] += 1
        whole = pull.chunk_arrived(offset, n)
        in_flight += pull.next_chunks()
    assert whole and covered == bytearray([1]) * size


def test_a_failed_pull_gives_its_space_back():
    store = ObjectStore(64 << 20)
    store.allocate(b"copy", 8 << 20, "")
    store.drop_unsealed(b"copy")
    assert store.objects == {} and store.allocator.used == 0
    store.allocate(b"sealed", 1 << 20, "")
    store.seal(b"sealed")
    store.drop_unsealed(b"sealed")
    assert b"sealed" in store.objects  # a whole object is never dropped this way
