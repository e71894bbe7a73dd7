"""A process's pins on its node's objects: reused while held, released after their grace."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cellfleet.core.pin_cache import PinCache


def test_a_pin_is_reused_while_held_and_goes_only_after_its_last_view():
    pins = PinCache()
    assert pins.take(b"o") is None  # not pinned: ask the raylet
    assert pins.add(b"o", [64, 10])
    assert pins.take(b"o") == [64, 10]  # a second view, no round trip
    assert pins.released(b"o") is None  # one view left
    generation = pins.released(b"o")
    assert generation is not None
    assert pins.take(b"o") == [64, 10]  # read again within the grace
    assert not pins.expire(b"o", generation)  # so the pin stays
    assert pins.expire(b"o", pins.released(b"o"))
    assert len(pins) == 0 and pins.take(b"o") is None


def test_a_second_pin_from_a_racing_read_is_one_too_many():
    pins = PinCache()
    assert pins.add(b"o", [0, 1])
    assert not pins.add(b"o", [0, 1])  # the caller unpins the extra one
    assert pins.released(b"o") is None and pins.released(b"o") is not None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["read", "release", "expire"]), max_size=60))
def test_a_pin_never_goes_while_a_view_lives(steps):
    pins, views, generations = PinCache(), 0, []
    for step in steps:
        if step == "read":
            if pins.take(b"o") is None:
                assert pins.add(b"o", [0, 1])
            views += 1
        elif step == "release" and views:
            views -= 1
            generation = pins.released(b"o")
            assert (generation is not None) == (views == 0)
            if generation is not None:
                generations.append(generation)
        elif step == "expire" and generations:
            gone = pins.expire(b"o", generations.pop(0))
            assert not (gone and views), "unpinned under a live view"
    assert (pins.take(b"o") is not None) or views == 0
