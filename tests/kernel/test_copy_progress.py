"""A large value copied into the object store shows a progress bar while it is copied."""

from __future__ import annotations

import numpy as np
import pytest

import cellfleet
from cellfleet import _context
from cellfleet.kernel import progress

pytestmark = pytest.mark.integration


class RecordingBar:
    def __init__(self, total: int, what: str) -> None:
        self.total, self.what, self.seen, self.closed = total, what, [], False

    def update(self, done: int) -> None:
        self.seen.append(done)

    def close(self) -> None:
        self.closed = True


@cellfleet.remote
def total(array) -> float:
    return float(array.sum())


def test_a_large_put_and_argument_show_a_bar_that_goes_away(
        fresh_cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh_cluster(object_store_memory=1200 * 2**20)
    monkeypatch.setattr(progress, "COPY_BAR_AFTER_S", 0.0)
    bars: list[RecordingBar] = []
    reporter = progress.ProgressReporter()
    reporter.bar_factory = lambda total, what: bars.append(RecordingBar(total, what)) or bars[-1]
    reporter.install()
    try:
        assert _context.copy_progress == reporter.copy_progress
        array = np.ones(300 * 10**6 // 8)
        ref = cellfleet.put(array)
        with pytest.warns(UserWarning, match="by value"):
            assert cellfleet.get(total.remote(array), timeout=60) == float(array.size)
        del ref
    finally:
        reporter.uninstall()
    assert _context.copy_progress is None
    assert len(bars) == 2, [b.what for b in bars]
    for bar in bars:
        assert "0.3 GB into the object store" in bar.what and bar.total == 300
        assert bar.seen == sorted(bar.seen) and bar.seen[-1] == 300 and bar.closed
    small = cellfleet.put(np.ones(1000))
    assert len(bars) == 2 and cellfleet.get(small).size == 1000  # small copies: no bar
