"""Connections over real sockets in one process: keepalive pings, timeouts, drain, the bound."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from cellfleet import _messages as m
from cellfleet._protocol import PING_FRAME, PONG_FRAME, FrameDecoder, encode_frame
from cellfleet._rpc import REQUEST_TIMEOUTS, Connection, Limits, connect, serve

TOKEN = b"t" * 32
FAST = Limits(high_water=64 << 10, low_water=16 << 10, max_outbox=4 << 20, stall_s=1.0,
              ping_idle_s=0.2, ping_timeout_s=0.4, tick_s=0.05)


async def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def with_pair(body: Callable[[Connection, list[Connection]], Awaitable[None]],
              limits: Limits = FAST) -> None:
    """Run ``body(client, accepted)`` against a server whose WaitActor never answers."""

    async def main() -> None:
        accepted: list[Connection] = []
        never: asyncio.Future = asyncio.get_running_loop().create_future()

        def wait_actor(conn: Connection, msg: m.WaitActor) -> Any:
            if conn not in accepted:
                accepted.append(conn)
            return never

        handlers = {m.WaitActor: wait_actor, m.KvGet: lambda conn, msg: b"x" * 1000}
        server, address = await serve(handlers, TOKEN, limits=limits)
        client = await connect(address, TOKEN, limits=limits)
        try:
            await body(client, accepted)
        finally:
            client.abort()
            for conn in accepted:
                conn.abort()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_a_live_peer_answers_pings_while_a_request_waits_long() -> None:
    async def body(client: Connection, accepted: list[Connection]) -> None:
        fut = client.request(m.WaitActor(b"a"))
        await wait_for(lambda: client._watch.pings >= 4)  # longer than the detection bound
        assert client.is_open and not fut.done() and client.pending_requests == 1

    with_pair(body)


def test_a_peer_that_stops_reading_and_answering_is_closed_with_the_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body(client: Connection, accepted: list[Connection]) -> None:
        fut = client.request(m.WaitActor(b"a"))
        await wait_for(lambda: accepted)
        accepted[0]._transport.pause_reading()  # type: ignore[union-attr]
        accepted[0].data_received = lambda data: None  # type: ignore[method-assign]
        with pytest.raises(ConnectionError, match="did not answer a keepalive ping"):
            await asyncio.wait_for(fut, FAST.detection_bound_s + 5)
        assert not client.is_open and client.pending_requests == 0

    with caplog.at_level(logging.WARNING, logger="cellfleet._rpc"):
        with_pair(body)
    assert any("closed as unresponsive" in r.getMessage() for r in caplog.records)


def test_a_late_deadline_left_by_an_answered_request_does_not_delay_pings() -> None:
    async def body(client: Connection, accepted: list[Connection]) -> None:
        assert await client.request(m.KvGet("n", b"k"), timeout=600) == b"x" * 1000
        await wait_for(lambda: client._timer is not None and client._timer_at > 500 + (
            asyncio.get_running_loop().time()))  # only the stale deadline is left to tick for
        client.request(m.WaitActor(b"a"))
        await wait_for(lambda: client._watch.pings >= 1, timeout=5)

    with_pair(body)


def test_a_request_with_a_timeout_fails_clearly_and_leaves_nothing_pending() -> None:
    async def body(client: Connection, accepted: list[Connection]) -> None:
        with pytest.raises(TimeoutError, match=r"WaitActor sent to .* no reply within 0.3 s"):
            await client.request(m.WaitActor(b"a"), timeout=0.3)
        assert client.pending_requests == 0 and client.is_open
        assert await client.request(m.KvGet("n", b"k"), timeout=5) == b"x" * 1000

    with_pair(body)


def test_callers_that_stop_waiting_leave_no_futures_behind() -> None:
    async def body(client: Connection, accepted: list[Connection]) -> None:
        for _ in range(200):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.request(m.WaitActor(b"a"), timeout=math.inf),
                                       0.001)
        await wait_for(lambda: client.pending_requests == 0, timeout=5)
        assert client._watch.outstanding == 0

    with_pair(body)


def test_request_timeouts_default_per_message_and_refuse_nonsense() -> None:
    assert REQUEST_TIMEOUTS[m.GetNodes] == 60.0 and m.WaitActor not in REQUEST_TIMEOUTS

    async def body(client: Connection, accepted: list[Connection]) -> None:
        with pytest.raises(ValueError, match="positive number of seconds"):
            client.request(m.KvGet("n", b"k"), timeout=0)

    with_pair(body)


def test_a_request_without_a_timeout_gets_its_message_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REQUEST_TIMEOUTS, m.WaitActor, 0.2)

    async def body(client: Connection, accepted: list[Connection]) -> None:
        with pytest.raises(TimeoutError, match="WaitActor .* within 0.2 s"):
            await client.request(m.WaitActor(b"a"))
        assert client.pending_requests == 0

    with_pair(body)


def test_drain_on_a_closed_connection_raises_with_the_reason() -> None:
    async def body(client: Connection, accepted: list[Connection]) -> None:
        client.abort()
        await client.closed
        with pytest.raises(ConnectionError, match="closed"):
            await client.drain()

    with_pair(body)


def test_drain_waits_for_a_slow_reader_then_returns() -> None:
    async def body(client: Connection, accepted: list[Connection]) -> None:
        client.request(m.WaitActor(b"a"))
        await wait_for(lambda: accepted)
        reader = accepted[0]._transport
        reader.pause_reading()  # type: ignore[union-attr]
        # Fixed socket buffers, whatever the machine's TCP autotuning allows: 4 MB cannot fit.
        reader.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        client._transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
        for _ in range(400):
            client.send(m.KvPut("n", b"k", b"v" * 10_000, True))
        await asyncio.sleep(0)
        drained = asyncio.ensure_future(client.drain())
        await asyncio.sleep(0.2)
        assert not drained.done() and client.unsent_bytes > FAST.low_water
        reader.resume_reading()  # type: ignore[union-attr]
        await asyncio.wait_for(drained, 10)
        assert client.unsent_bytes <= FAST.low_water and client.is_open

    with_pair(body, Limits(**{**_fields(FAST), "stall_s": 30.0, "max_outbox": 64 << 20}))


def test_an_outbox_past_its_bound_is_closed_as_wedged(caplog: pytest.LogCaptureFixture) -> None:
    async def body(client: Connection, accepted: list[Connection]) -> None:
        fut = client.request(m.WaitActor(b"a"), timeout=math.inf)
        await wait_for(lambda: accepted)
        accepted[0]._transport.pause_reading()  # type: ignore[union-attr]
        for _ in range(100):  # 10 MB for a peer that reads nothing: the bound is 4 MiB
            client.send(m.KvPut("n", b"k", b"v" * 100_000, True))
            await asyncio.sleep(0)
        with pytest.raises(ConnectionError, match="outbox bound"):
            await asyncio.wait_for(fut, 5)
        assert not client.is_open

    with caplog.at_level(logging.WARNING, logger="cellfleet._rpc"):
        with_pair(body)
    assert any("wedged" in r.getMessage() for r in caplog.records)


def test_closing_a_connection_the_peer_never_reads_ends_at_the_stall_time() -> None:
    async def body(client: Connection, accepted: list[Connection]) -> None:
        with pytest.raises(TimeoutError):  # no request outstanding, so no ping: the pause rule
            await client.request(m.WaitActor(b"a"), timeout=0.1)
        accepted[0]._transport.pause_reading()  # type: ignore[union-attr]
        for _ in range(300):  # 30 MB, more than the sockets' buffers take, under the bound
            client.send(m.KvPut("n", b"k", b"v" * 100_000, True))
        await asyncio.sleep(0)
        client.close()  # waits for a backlog that is never taken...
        await asyncio.wait_for(client.closed, FAST.stall_s + 5)  # ...until the watch aborts
        assert "read nothing" in client._close_reason

    with_pair(body, Limits(**{**_fields(FAST), "max_outbox": 64 << 20}))


def test_every_tcp_socket_has_kernel_keepalive() -> None:
    async def body(client: Connection, accepted: list[Connection]) -> None:
        client.request(m.WaitActor(b"a"))
        await wait_for(lambda: accepted)
        for conn in (client, accepted[0]):
            sock = conn._transport.get_extra_info("socket")  # type: ignore[union-attr]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30_000

    with_pair(body)


def test_control_frames_are_counted_or_dropped_between_frames_in_any_split() -> None:
    stream = PING_FRAME + encode_frame(b"one") + PONG_FRAME + PING_FRAME + encode_frame(b"")
    for chunk in range(1, len(stream) + 1):
        decoder, frames = FrameDecoder(max_frame=16), []
        for i in range(0, len(stream), chunk):
            frames += decoder.feed(stream[i : i + chunk])
        assert frames == [b"one", b""] and decoder.pings == 2 and decoder.buffered == 0


def _fields(limits: Limits) -> dict[str, Any]:
    return {name: getattr(limits, name) for name in Limits.__dataclass_fields__}
