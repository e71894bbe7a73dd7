"""Costs that must not grow: waiters of ``get``/``wait`` on many refs, copies of large arguments."""

from __future__ import annotations

import time

import pytest

import cellfleet
from cellfleet import _context
from cellfleet.core import core_worker, memory_store

pytestmark = pytest.mark.integration


@cellfleet.remote
def slow(i: int) -> int:
    time.sleep(0.002)
    return i


@cellfleet.remote
def forever() -> None:
    time.sleep(3600)


@pytest.fixture
def counted_waiters(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ``needed`` count of every waiter the driver creates."""
    created: list[int] = []

    class Counted(memory_store.Waiter):
        __slots__ = ()

        def __init__(self, needed: int, *args: bool) -> None:
            created.append(needed)
            super().__init__(needed, *args)

    monkeypatch.setattr(memory_store, "Waiter", Counted)
    return created


def test_get_of_many_trickling_results_waits_once(cluster, counted_waiters: list[int]) -> None:
    refs = [slow.remote(i) for i in range(400)]
    assert cellfleet.get(refs, timeout=60) == list(range(400))
    assert len(counted_waiters) <= 1, (
        f"get() registered {len(counted_waiters)} waiters on its pending refs: one per wake-up")


def test_wait_for_some_of_many_counts_down_once(cluster, counted_waiters: list[int]) -> None:
    refs = [slow.remote(i) for i in range(200)]
    ready, not_ready = cellfleet.wait(refs, num_returns=150, timeout=60)
    assert len(ready) == 150 and len(not_ready) == 50
    assert len(counted_waiters) <= 1
    cellfleet.get(not_ready, timeout=60)


def test_a_timed_out_get_leaves_no_waiter_behind(cluster) -> None:
    done = [slow.remote(i) for i in range(5)]
    cellfleet.get(done, timeout=30)
    stuck = [forever.remote() for _ in range(3)]
    with pytest.raises(cellfleet.exceptions.GetTimeoutError, match="3 of 8 object"):
        cellfleet.get(done + stuck, timeout=1.0)
    entries = _context.core.refs.entries
    assert all(not entries[ref.binary()].waiters for ref in stuck)
    for ref in stuck:
        cellfleet.cancel(ref, force=True)
    for ref in stuck:
        with pytest.raises(cellfleet.exceptions.TaskCancelledError):
            cellfleet.get(ref, timeout=30)


def test_get_of_the_same_pending_ref_twice(cluster) -> None:
    ref = slow.remote(7)
    assert cellfleet.get([ref, ref, ref], timeout=30) == [7, 7, 7]


def test_a_large_argument_by_value_is_copied_once(cluster, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    """Sizing the arguments must not pickle a large array in band (a second full copy)."""
    np = pytest.importorskip("numpy")
    pickled_sizes: list[int] = []
    real = core_worker.serialize

    def recording(value, *args, **kwargs):
        obj = real(value, *args, **kwargs)
        pickled_sizes.append(len(obj.pickled))
        return obj

    monkeypatch.setattr(core_worker, "serialize", recording)
    array = np.arange(1 << 20, dtype=np.float64)  # 8 MiB
    assert cellfleet.get(total.remote(array), timeout=60) == float(array.sum())
    assert pickled_sizes and max(pickled_sizes) < 1 << 20, pickled_sizes


@cellfleet.remote
def total(array) -> float:
    return float(array.sum())


@cellfleet.remote
def fails() -> None:
    raise ValueError("boom")


def test_get_raises_a_failed_ref_at_once_while_others_are_pending(cluster) -> None:
    pending = forever.remote()
    failed = fails.remote()
    with pytest.raises(ValueError, match="boom"):
        cellfleet.get([pending, failed], timeout=60)
    entries = _context.core.refs.entries
    assert not entries[pending.binary()].waiters
    with pytest.raises(ValueError, match="boom"):
        cellfleet.get([failed, pending], timeout=60)  # already failed: no wait at all
    cellfleet.cancel(pending, force=True)
    with pytest.raises(cellfleet.exceptions.TaskCancelledError):
        cellfleet.get(pending, timeout=30)


def test_wait_counts_a_failed_ref_as_ready(cluster) -> None:
    failed = fails.remote()
    ok = slow.remote(1)
    ready, rest = cellfleet.wait([failed, ok], num_returns=2, timeout=60)
    assert set(ready) == {failed, ok} and not rest


def test_leases_of_a_cached_worker_connection_do_not_pile_up_callbacks(cluster) -> None:
    """Each lease watches its worker's connection; a returned lease stops watching it."""
    core = _context.core
    for i in range(30):
        assert cellfleet.get(slow.remote(i), timeout=30) == i
        time.sleep(0.03)  # longer than a lease stays idle: the next task takes a new lease

    async def watchers() -> list[int]:
        peers = [f.result() for f in core.peers._connections.values()
                 if f.done() and not f.exception()]
        return [len(conn.closed._callbacks or ()) for conn in peers]

    counts = core.run(watchers(), timeout=10)
    assert counts and max(counts) <= 4, counts
