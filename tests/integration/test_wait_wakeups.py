"""``wait()`` takes its wake-up off every ref it waited on when it returns: a
``ready, rest = wait(rest)`` loop over many refs used to leave one dead waiter per pending ref
per round (84,900 over 600 refs), each called back again when its ref completed."""

from __future__ import annotations

import time

import pytest

import cellfleet
from cellfleet import _context

pytestmark = pytest.mark.integration


@cellfleet.remote
def slow(i: int) -> int:
    time.sleep(0.002)
    return i


def _waiters_on(refs: list) -> int:
    entries = _context.core.refs.entries
    return sum(len(entries[r.binary()].waiters) for r in refs if r.binary() in entries)


def test_a_wait_loop_leaves_no_waiter_on_the_refs_still_pending(cluster) -> None:
    rest = [slow.remote(i) for i in range(300)]
    done: list[int] = []
    left_behind = []
    while rest:
        ready, rest = cellfleet.wait(rest, timeout=60)
        assert ready, "wait() timed out"
        done += cellfleet.get(ready, timeout=60)
        left_behind.append(_waiters_on(rest))
    assert sorted(done) == list(range(300))
    assert max(left_behind) == 0, f"waiters left on pending refs, per round: {left_behind}"


def test_a_wait_for_several_leaves_no_waiter_either(cluster) -> None:
    rest = [slow.remote(i) for i in range(100)]
    while rest:
        ready, rest = cellfleet.wait(rest, num_returns=min(7, len(rest)), timeout=60)
        assert _waiters_on(rest) == 0
