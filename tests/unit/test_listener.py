"""A listener's admission of connections still in the handshake, and its refusal log."""

from __future__ import annotations

import logging

import pytest

from cellfleet import _rpc


class Peer:
    """Stands in for a connection: the listener only reads ``peer`` and calls ``abort``."""

    def __init__(self, name: str) -> None:
        self.peer = name
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def test_a_full_listener_drops_the_oldest_waiting_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_rpc, "MAX_UNAUTHENTICATED", 3)
    listener = _rpc.Listener()
    peers = [Peer(f"p{i}") for i in range(5)]
    for peer in peers[:3]:
        listener.admit(peer)  # type: ignore[arg-type]
    listener.leave(peers[1])  # finished its handshake
    listener.admit(peers[3])  # type: ignore[arg-type]
    assert not any(p.aborted for p in peers)
    listener.admit(peers[4])  # type: ignore[arg-type]
    assert [p.aborted for p in peers] == [True, False, False, False, False]
    assert listener.unauthenticated == 3 and listener.refused == 1


def test_refusals_are_logged_once_per_interval_with_a_count(
        caplog: pytest.LogCaptureFixture) -> None:
    listener = _rpc.Listener()
    with caplog.at_level(logging.WARNING, logger="cellfleet._rpc"):
        for i in range(500):
            listener.refuse(f"peer{i}", "garbage")
        listener._last_log -= _rpc.REFUSAL_LOG_INTERVAL_S  # the interval has passed
        listener.refuse("late", "garbage")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and listener.refused == 501
    assert "499 more refused" in messages[1]
