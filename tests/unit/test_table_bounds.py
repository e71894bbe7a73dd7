"""Bounded tables: the dead-entry bound and the core worker's event buffer."""

from __future__ import annotations

import pytest

from cellfleet import _messages as m
from cellfleet._graveyard import Graveyard, limit_from_env
from cellfleet.core.events import MAX_UNSENT_BYTES, EventBuffer


def test_the_oldest_deaths_are_forgotten_beyond_the_limit() -> None:
    graveyard = Graveyard(limit=2)
    assert graveyard.bury("a") == []
    assert graveyard.bury("b") == []
    graveyard.revive("a")  # registered again: no longer dead
    assert graveyard.bury("c") == []
    assert graveyard.bury("d") == ["b"]
    assert (len(graveyard), graveyard.forgotten) == (2, 1)
    assert Graveyard(limit=0).bury("x") == ["x"]


def test_limits_from_the_environment_are_checked(monkeypatch) -> None:
    assert limit_from_env("CELLFLEET_TEST_LIMIT", 7) == 7
    monkeypatch.setenv("CELLFLEET_TEST_LIMIT", "3")
    assert limit_from_env("CELLFLEET_TEST_LIMIT", 7) == 3
    monkeypatch.setenv("CELLFLEET_TEST_LIMIT", "many")
    with pytest.raises(ValueError, match="CELLFLEET_TEST_LIMIT='many' is not a count"):
        limit_from_env("CELLFLEET_TEST_LIMIT", 7)


class FakeGcs:
    is_open = True

    def __init__(self, unsent_bytes: int = 0) -> None:
        self.sent: list[m.Message] = []
        self.unsent_bytes = unsent_bytes

    def send(self, message: m.Message) -> None:
        self.sent.append(message)


def test_the_event_buffer_keeps_the_newest_and_reports_what_it_dropped() -> None:
    events = EventBuffer(max_size=3)
    for i in range(5):
        events.task(bytes([i]), "FINISHED")
        events.log([0, "", b"", "f", 1, "stdout", f"line {i}"])
    events.object(b"o", "CREATED")
    events.flush(None)  # the GCS is away: nothing leaves, nothing grows past the bound
    stalled = FakeGcs(unsent_bytes=MAX_UNSENT_BYTES + 1)
    events.flush(stalled)  # connected, but not reading: hold the batch
    assert stalled.sent == []
    assert len(events.tasks) == 3 and len(events.logs) == 3
    gcs = FakeGcs()
    events.flush(gcs)
    batch, logs = gcs.sent
    assert [event[0] for event in batch.tasks] == [b"\2", b"\3", b"\4"]
    assert batch.dropped == {"task_events": 2, "log_lines": 2}
    assert [line[-1] for line in logs.lines] == ["line 2", "line 3", "line 4"]
    gcs.sent.clear()
    events.flush(gcs)
    assert gcs.sent == []  # drops are reported once
    assert events.dropped == {"task_events": 2, "object_events": 0, "log_lines": 2}
