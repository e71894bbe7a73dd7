"""Tests for cellfleet.raylet.allocator.ArenaAllocator."""

from __future__ import annotations

import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
)

from cellfleet.raylet.allocator import ArenaAllocator

A = 4096


# ---------------------------------------------------------------------- reference model


class NaiveBestFit:
    """Obviously-correct O(n) model: same policy (best fit, lowest offset on ties)."""

    def __init__(self, capacity: int, alignment: int) -> None:
        self.alignment = alignment
        self.capacity = capacity - capacity % alignment
        self.free_blocks: list[tuple[int, int]] = [(0, self.capacity)] if self.capacity else []
        self.live: dict[int, int] = {}

    def allocate(self, size: int) -> int | None:
        rounded = max(self.alignment, -(-size // self.alignment) * self.alignment)
        fits = [(s, o) for o, s in self.free_blocks if s >= rounded]
        if not fits:
            return None
        s, o = min(fits)
        self.free_blocks.remove((o, s))
        if s > rounded:
            self.free_blocks.append((o + rounded, s - rounded))
        self.live[o] = rounded
        return o

    def free(self, offset: int) -> int:
        size = self.live.pop(offset)
        blocks = sorted([*self.free_blocks, (offset, size)])
        merged: list[tuple[int, int]] = []
        for o, s in blocks:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self.free_blocks = merged
        return size


def assert_consistent(alloc: ArenaAllocator, live: dict[int, int]) -> None:
    """Live blocks are aligned, in bounds, disjoint, and the accounting matches."""
    prev_end = 0
    for off in sorted(live):
        size = live[off]
        assert off % alloc.alignment == 0
        assert size % alloc.alignment == 0 and size >= alloc.alignment
        assert off >= prev_end, "overlapping blocks"
        prev_end = off + size
        assert prev_end <= alloc.capacity
        assert alloc.size_of(off) == size
    assert alloc.used == sum(live.values())
    assert alloc.available == alloc.capacity - alloc.used
    assert alloc.num_allocations == len(live)
    assert alloc.largest_free_block <= alloc.available


# ---------------------------------------------------------------------- basics


def test_initial_state() -> None:
    a = ArenaAllocator(10 * A)
    assert a.capacity == 10 * A
    assert a.alignment == A
    assert a.used == 0
    assert a.available == 10 * A
    assert a.largest_free_block == 10 * A
    assert a.num_allocations == 0


def test_capacity_rounded_down_to_alignment() -> None:
    a = ArenaAllocator(10 * A + 123)
    assert a.capacity == 10 * A
    assert a.allocate(10 * A) == 0
    assert a.allocate(1) is None


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        ArenaAllocator(-1)
    with pytest.raises(ValueError):
        ArenaAllocator(A, alignment=0)
    a = ArenaAllocator(A)
    with pytest.raises(ValueError):
        a.allocate(-1)
    with pytest.raises(TypeError):
        a.allocate(1.5)  # type: ignore[arg-type]


def test_zero_capacity() -> None:
    a = ArenaAllocator(0)
    assert a.largest_free_block == 0
    assert a.allocate(0) is None


def test_sizes_round_up_and_offsets_aligned() -> None:
    a = ArenaAllocator(100 * A)
    o1 = a.allocate(1)
    o2 = a.allocate(A)
    o3 = a.allocate(A + 1)
    assert (o1, o2, o3) == (0, A, 2 * A)
    assert a.size_of(o1) == A and a.size_of(o2) == A and a.size_of(o3) == 2 * A
    assert a.used == 4 * A
    assert a.allocate(5) == 4 * A


def test_zero_size_gets_distinct_block() -> None:
    a = ArenaAllocator(4 * A)
    offsets = [a.allocate(0) for _ in range(4)]
    assert offsets == [0, A, 2 * A, 3 * A]
    assert a.used == 4 * A
    assert a.allocate(0) is None
    assert a.free(offsets[2]) == A
    assert a.allocate(0) == 2 * A


def test_custom_alignment() -> None:
    a = ArenaAllocator(1000, alignment=64)
    assert a.capacity == 960
    assert a.allocate(1) == 0
    assert a.allocate(65) == 64
    assert a.allocate(0) == 192
    assert a.used == 256


def test_exact_fill_then_full_returns_none() -> None:
    a = ArenaAllocator(8 * A)
    assert a.allocate(8 * A) == 0
    assert a.available == 0
    assert a.largest_free_block == 0
    assert a.allocate(0) is None
    assert a.allocate(1) is None
    assert a.used == 8 * A


def test_too_large_returns_none_without_side_effects() -> None:
    a = ArenaAllocator(8 * A)
    assert a.allocate(8 * A + 1) is None
    assert a.used == 0 and a.num_allocations == 0 and a.largest_free_block == 8 * A


def test_free_returns_size_and_updates_accounting() -> None:
    a = ArenaAllocator(8 * A)
    off = a.allocate(3 * A - 7)
    assert a.used == 3 * A
    assert a.free(off) == 3 * A
    assert a.used == 0 and a.available == 8 * A and a.num_allocations == 0
    assert off not in a


def test_free_unknown_offset_raises_keyerror() -> None:
    a = ArenaAllocator(8 * A)
    off = a.allocate(A)
    with pytest.raises(KeyError):
        a.free(off + 1)  # inside a block, but not its start
    with pytest.raises(KeyError):
        a.free(4 * A)  # free space
    a.free(off)
    with pytest.raises(KeyError):
        a.free(off)  # double free
    assert a.used == 0


def test_best_fit_prefers_smallest_sufficient_block() -> None:
    a = ArenaAllocator(100 * A)
    # Layout: [h0 1][big gap 5][h1 1][small gap 2][h2 1][rest]
    h0 = a.allocate(A)
    gap5 = a.allocate(5 * A)
    a.allocate(A)
    gap2 = a.allocate(2 * A)
    a.allocate(A)
    assert h0 == 0
    a.free(gap5)
    a.free(gap2)
    assert a.allocate(2 * A) == gap2  # exact fit beats the larger earlier hole
    assert a.allocate(A) == gap5  # smallest remaining sufficient block is the 5-page hole
    assert a.allocate(4 * A) == gap5 + A


def test_best_fit_tie_breaks_on_lowest_offset() -> None:
    a = ArenaAllocator(20 * A)
    blocks = [a.allocate(A) for _ in range(6)]
    a.free(blocks[3])
    a.free(blocks[1])
    assert a.allocate(A) == blocks[1]
    assert a.allocate(A) == blocks[3]


def test_coalesce_with_right_neighbour() -> None:
    a = ArenaAllocator(4 * A)
    b = [a.allocate(A) for _ in range(4)]
    a.free(b[2])
    a.free(b[1])  # merges with b[2] on its right
    assert a.largest_free_block == 2 * A
    assert a.allocate(2 * A) == b[1]


def test_coalesce_with_left_neighbour() -> None:
    a = ArenaAllocator(4 * A)
    b = [a.allocate(A) for _ in range(4)]
    a.free(b[1])
    a.free(b[2])  # merges with b[1] on its left
    assert a.largest_free_block == 2 * A
    assert a.allocate(2 * A) == b[1]


def test_coalesce_both_sides() -> None:
    a = ArenaAllocator(5 * A)
    b = [a.allocate(A) for _ in range(5)]
    a.free(b[1])
    a.free(b[3])
    assert a.largest_free_block == A
    a.free(b[2])  # bridges the two holes
    assert a.largest_free_block == 3 * A
    assert a.allocate(3 * A) == b[1]


def test_coalesce_with_trailing_free_space() -> None:
    a = ArenaAllocator(10 * A)
    x = a.allocate(A)
    y = a.allocate(A)
    a.free(y)  # merges with the 8 free pages after it
    assert a.largest_free_block == 9 * A
    a.free(x)
    assert a.largest_free_block == 10 * A


def test_fragmentation_then_reuse() -> None:
    a = ArenaAllocator(16 * A)
    b = [a.allocate(A) for _ in range(16)]
    assert a.allocate(0) is None
    for off in b[::2]:
        a.free(off)
    assert a.available == 8 * A
    assert a.largest_free_block == A
    assert a.allocate(2 * A) is None  # plenty free, but fragmented
    for off in b[1::2]:
        a.free(off)
    assert a.largest_free_block == 16 * A
    assert a.allocate(16 * A) == 0


def test_free_everything_in_random_order_restores_single_block() -> None:
    rng = random.Random(1234)
    a = ArenaAllocator(1 << 30)
    live = {}
    while True:
        off = a.allocate(rng.randrange(0, 64 * A))
        if off is None:
            break
        live[off] = a.size_of(off)
    assert_consistent(a, live)
    offsets = list(live)
    rng.shuffle(offsets)
    for off in offsets:
        assert a.free(off) == live.pop(off)
    assert a.used == 0 and a.num_allocations == 0
    assert a.largest_free_block == a.capacity
    assert a.allocate(a.capacity) == 0


# ---------------------------------------------------------------------- randomized / model


@pytest.mark.parametrize("seed", range(5))
def test_randomized_against_naive_model(seed: int) -> None:
    rng = random.Random(seed)
    cap = 512 * A + rng.randrange(A)
    a = ArenaAllocator(cap)
    m = NaiveBestFit(cap, A)
    for _ in range(3000):
        if m.live and rng.random() < 0.45:
            off = rng.choice(list(m.live))
            assert a.free(off) == m.free(off)
        else:
            size = rng.choice([0, 1, A - 1, A, A + 1, rng.randrange(40 * A)])
            assert a.allocate(size) == m.allocate(size)
        assert_consistent(a, m.live)
        assert a.largest_free_block == max((s for _, s in m.free_blocks), default=0)
    for off in list(m.live):
        a.free(off)
        m.free(off)
    assert a.largest_free_block == a.capacity and a.used == 0


def test_many_blocks_is_fast() -> None:
    """Smoke test for near-O(log n): 10^5 live blocks, interleaved frees and allocations."""
    import time

    rng = random.Random(7)
    a = ArenaAllocator(1 << 40)
    offs = [a.allocate(rng.randrange(1, 8 * A)) for _ in range(100_000)]
    rng.shuffle(offs)
    t = time.perf_counter()
    for off in offs[::2]:
        a.free(off)
    for _ in range(50_000):
        a.allocate(rng.randrange(1, 8 * A))
    assert time.perf_counter() - t < 10.0
    assert a.num_allocations == 100_000


class AllocatorMachine(RuleBasedStateMachine):
    """Stateful property test: random allocate/free sequences keep the arena consistent."""

    offsets = Bundle("offsets")

    def __init__(self) -> None:
        super().__init__()
        self.alloc = ArenaAllocator(64 * A + 100)
        self.model = NaiveBestFit(64 * A + 100, A)

    @rule(target=offsets, size=st.one_of(st.integers(0, 3 * A), st.integers(0, 70 * A)))
    def allocate(self, size: int) -> object:
        off = self.alloc.allocate(size)
        assert off == self.model.allocate(size)
        if off is None:
            assert self.alloc.largest_free_block < max(A, -(-size // A) * A)
            return multiple()
        return off

    @rule(off=consumes(offsets))
    def free(self, off: int) -> None:
        assert self.alloc.free(off) == self.model.free(off)

    @precondition(lambda self: self.model.live)
    @rule()
    def free_unknown(self) -> None:
        bogus = max(self.model.live) + 1
        with pytest.raises(KeyError):
            self.alloc.free(bogus)

    @invariant()
    def consistent(self) -> None:
        assert_consistent(self.alloc, self.model.live)

    def teardown(self) -> None:
        for off in list(self.model.live):
            self.alloc.free(off)
        assert self.alloc.used == 0
        assert self.alloc.largest_free_block == self.alloc.capacity == 64 * A
        assert self.alloc.allocate(64 * A) == 0


TestAllocatorStateful = AllocatorMachine.TestCase
TestAllocatorStateful.settings = settings(max_examples=150, stateful_step_count=60,
                                          deadline=None)
