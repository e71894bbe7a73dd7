"""A connection's watch, fed events with no socket: outbox bound, keepalive, request timeouts."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cellfleet._connection_state import (
    DEFAULT_LIMITS,
    Close,
    ConnectionWatch,
    Expire,
    Limits,
    SendPing,
)

LIMITS = Limits(high_water=100, low_water=10, max_outbox=1000, stall_s=3.0, ping_idle_s=2.0,
                ping_timeout_s=4.0, tick_s=0.5)


def watch() -> ConnectionWatch:
    return ConnectionWatch("10.0.0.7:4000", LIMITS)


def run_until(w: ConnectionWatch, start: float, end: float, *, heard: bool = False,
              backlog: int = 0, drained: int = 0) -> list[tuple[float, object]]:
    """Tick ``w`` whenever it asks to be ticked, from ``start`` to ``end``; the actions seen."""
    seen: list[tuple[float, object]] = []
    now = start
    while True:
        when = w.next_tick(now)
        if when is None or when > end:
            return seen
        now = when
        seen += [(now, a) for a in w.tick(now, heard=heard, backlog=backlog, drained=drained)]


def test_an_idle_connection_asks_for_no_ticks() -> None:
    w = watch()
    assert not w.watching and w.next_tick(0.0) is None


def test_a_silent_peer_with_a_request_outstanding_is_pinged_then_closed() -> None:
    w = watch()
    w.request_sent(1, "GetNodes", now=10.0)
    seen = run_until(w, 10.0, 100.0)
    assert [(t, type(a)) for t, a in seen] == [(12.0, SendPing), (16.0, Close)]
    reason = seen[-1][1].reason  # type: ignore[attr-defined]
    assert "10.0.0.7:4000 did not answer a keepalive ping within 4 s" in reason
    assert "GetNodes" in reason and "paused" in reason
    assert w.closed == reason and w.outstanding == 0 and w.next_tick(16.0) is None


def test_the_detection_bound_is_the_idle_time_plus_the_ping_timeout() -> None:
    assert DEFAULT_LIMITS.detection_bound_s == 15.0
    assert LIMITS.detection_bound_s == 6.0


def test_a_peer_that_answers_the_ping_stays_open_and_is_pinged_again_later() -> None:
    w = watch()
    w.request_sent(1, "WaitActor", now=0.0)
    assert run_until(w, 0.0, 2.0) == [(2.0, SendPing())]
    assert w.tick(2.5, heard=True, backlog=0, drained=0) == []  # the pong
    seen = run_until(w, 2.5, 4.9)
    assert seen == [(4.0, SendPing())]  # silence counted from the tick before the pong


def test_a_chatty_peer_is_never_pinged() -> None:
    w = watch()
    w.request_sent(1, "WaitActor", now=0.0)
    now = 0.0
    for _ in range(100):
        now = w.next_tick(now)  # type: ignore[assignment]
        assert w.tick(now, heard=True, backlog=0, drained=0) == []


def test_silence_counts_from_the_first_request_not_from_long_ago() -> None:
    w = watch()
    w.request_sent(1, "KvGet", now=0.0)
    w.answered(1)
    assert not w.watching
    w.request_sent(2, "KvGet", now=500.0)
    assert run_until(w, 500.0, 501.9) == []


def test_a_request_expires_once_at_its_deadline_and_leaves_nothing() -> None:
    w = watch()
    w.request_sent(1, "GetFunction", now=0.0, timeout=1.2)
    assert w.tick(1.0, heard=True, backlog=0, drained=0) == []
    assert w.next_tick(1.0) == pytest.approx(1.2)
    assert w.tick(1.2, heard=True, backlog=0, drained=0) == [Expire(1, "GetFunction", 1.2)]
    assert w.tick(5.0, heard=True, backlog=0, drained=0) == []
    assert w.outstanding == 0 and not w.watching


def test_an_answered_request_never_expires() -> None:
    w = watch()
    w.request_sent(1, "GetFunction", now=0.0, timeout=1.0)
    w.answered(1)
    assert w.tick(2.0, heard=True, backlog=0, drained=0) == []


def test_answered_requests_do_not_pile_up_in_the_deadline_heap() -> None:
    w = watch()
    for i in range(10_000):
        w.request_sent(i, "KvGet", now=0.0, timeout=60.0)
        w.answered(i)
    assert len(w._deadlines) <= 64 + 1


def test_an_outbox_over_its_bound_is_closed_as_wedged() -> None:
    w = watch()
    assert w.flushed(1000) is None
    close = w.flushed(1001)
    assert isinstance(close, Close)
    assert "has not read 0.0 MiB" in close.reason and "wedged" in close.reason
    assert w.flushed(5000) is None  # said once


def test_a_peer_that_reads_nothing_but_owes_nothing_stays_connected_under_the_bound() -> None:
    w = watch()
    assert w.flushed(900) is None and not w.watching and w.next_tick(0.0) is None


def test_a_closing_connection_the_peer_takes_nothing_from_is_aborted_after_the_stall_time(
) -> None:
    w = watch()
    w.closing(now=0.0, drained=500)
    seen = run_until(w, 0.0, 10.0, backlog=200, drained=500)
    assert [(t, type(a)) for t, a in seen] == [(3.0, Close)]
    assert "read nothing of the 0.0 MiB queued for it in 3 s after the connection was closed" \
        in seen[0][1].reason  # type: ignore[attr-defined]


def test_a_closing_connection_that_drains_slowly_is_left_to_finish() -> None:
    w = watch()
    w.closing(now=0.0, drained=0)
    now, drained = 0.0, 0
    for _ in range(40):
        now = w.next_tick(now)  # type: ignore[assignment]
        drained += 1  # a slow reader: one byte a tick
        assert w.tick(now, heard=False, backlog=200, drained=drained) == []


def test_a_peer_taking_bytes_of_a_full_outbox_counts_as_heard() -> None:
    w = watch()
    w.request_sent(1, "GetNodeStats", now=0.0)
    now, drained = 0.0, 0
    for _ in range(40):  # it never sends a byte back, but it reads
        now = w.next_tick(now)  # type: ignore[assignment]
        drained += 10
        actions = w.tick(now, heard=False, backlog=500, drained=drained)
        assert not any(isinstance(a, Close) for a in actions)
    assert w.pings == 0


def test_awaited_one_way_answers_count_like_requests() -> None:
    w = watch()
    w.awaiting(64, now=0.0)
    assert [type(a) for _, a in run_until(w, 0.0, 7.0)] == [SendPing, Close]
    w = watch()
    w.awaiting(3, now=0.0)
    w.awaiting(0, now=1.0)
    assert run_until(w, 1.0, 20.0) == []


@pytest.mark.parametrize("kwargs", [dict(low_water=200, high_water=100),
                                    dict(high_water=2000, max_outbox=1000),
                                    dict(ping_idle_s=0), dict(tick_s=-1)])
def test_inconsistent_limits_are_refused_with_the_rule(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="connection limit"):
        Limits(**kwargs)


# -- hypothesis: any order of events --------------------------------------------------------

event = st.one_of(
    st.tuples(st.just("send"), st.one_of(st.none(), st.floats(0.01, 20.0))),
    st.tuples(st.just("answer"), st.integers(0, 30)),
    st.tuples(st.just("wait"), st.floats(0.0, 3.0), st.booleans()),
    st.tuples(st.just("close")),
    st.tuples(st.just("drain"), st.integers(0, 50)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(event, max_size=60))
@example([("send", None), ("wait", 3.0, False), ("drain", 1), ("wait", 1.0, False),
          ("wait", 3.0, False)])  # a peer that takes bytes of a full outbox is heard
def test_any_order_of_events_keeps_the_tables_consistent(events: list[tuple]) -> None:
    """Expiries are exact and once; answered or expired requests leave nothing behind;
    a silent peer owing answers is closed within the detection bound."""
    w = watch()
    now, next_id, drained, ticked_drained = 0.0, 0, 0, 0
    sent: dict[int, float] = {}  # live request -> deadline
    expired: set[int] = set()
    last_heard = 0.0
    closed_at = None
    for ev in events:
        if ev[0] == "send":
            if not w.watching:
                last_heard = now
            w.request_sent(next_id, "KvGet", now, ev[1])
            sent[next_id] = math.inf if ev[1] is None else now + ev[1]
            next_id += 1
        elif ev[0] == "answer" and ev[1] in sent:
            w.answered(ev[1])
            del sent[ev[1]]
        elif ev[0] == "close":
            if not w.watching:
                last_heard = now
            w.closing(now, drained)
            ticked_drained = drained  # the close counts from what was taken by then
        elif ev[0] == "drain":
            drained += ev[1]
        elif ev[0] == "wait":
            end = now + ev[1]
            while w.closed is None:
                when = w.next_tick(now)
                if when is None or when > end:
                    break
                assert when >= now
                now = when
                if ev[2] or drained > ticked_drained:  # a full outbox's bytes taken: heard
                    last_heard = now
                ticked_drained = drained
                for action in w.tick(now, heard=ev[2], backlog=200, drained=drained):
                    if isinstance(action, Expire):
                        assert action.request_id in sent and action.request_id not in expired
                        assert sent.pop(action.request_id) <= now
                        expired.add(action.request_id)
                    elif isinstance(action, Close):
                        closed_at = now
            now = end
        if w.closed is not None:
            break
        assert w.outstanding == len(sent)
        assert all(deadline > now for deadline in sent.values() if deadline != math.inf)
        assert len(w._deadlines) <= 2 * len(sent) + 65
        if sent:
            assert now - last_heard <= LIMITS.detection_bound_s + LIMITS.tick_s
    if closed_at is not None:
        assert w.outstanding == 0 and w.next_tick(closed_at) is None
