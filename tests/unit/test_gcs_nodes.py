"""The GCS's node table: liveness from heartbeats, re-registration, the bound on dead nodes."""

from __future__ import annotations

import pytest

from cellfleet.gcs.nodes import DEAD, SUSPECT, NodeDied, NodeForgotten, NodeTable


def record(node_id: bytes) -> dict:
    return {"node_id": node_id, "raylet_address": "127.0.0.1:1", "resources": {"CPU": 1.0}}


def test_silence_makes_a_node_suspect_then_dead() -> None:
    table = NodeTable(timeout_s=10)
    table.register(record(b"n1"), now=0)
    assert table.tick(now=4) == []
    assert table.nodes[b"n1"]["state"] == "ALIVE"
    assert table.tick(now=6) == []
    assert table.nodes[b"n1"]["state"] == SUSPECT and table.nodes[b"n1"]["alive"]
    assert table.heartbeat(b"n1", now=7, available={"CPU": 0.0})
    assert table.nodes[b"n1"]["state"] == "ALIVE"
    assert table.nodes[b"n1"]["available"] == {"CPU": 0.0}
    (died,) = table.tick(now=17.5)
    assert isinstance(died, NodeDied) and died.node_id == b"n1"
    assert "no heartbeat for 10.5s" in died.reason
    assert table.nodes[b"n1"]["state"] == DEAD and not table.nodes[b"n1"]["alive"]
    assert table.tick(now=30) == []  # dies once


def test_a_paused_node_is_told_to_register_again_and_comes_back() -> None:
    table = NodeTable(timeout_s=10)
    table.register(record(b"n1"), now=0)
    table.tick(now=11)
    assert table.heartbeat(b"n1", now=12, available={}) is False  # ignored: re-register
    assert table.nodes[b"n1"]["state"] == DEAD
    table.register(record(b"n1"), now=13)
    node = table.nodes[b"n1"]
    assert (node["state"], node["alive"], node["start_time"]) == ("ALIVE", True, 13)
    assert table.heartbeat(b"n1", now=14)
    assert table.stats() == {"alive": 1, "suspect": 0, "dead": 0, "dead_forgotten": 0}


def test_unknown_nodes_are_told_to_register() -> None:
    assert NodeTable(timeout_s=10).heartbeat(b"nobody", now=0) is False


def test_only_the_current_registrations_connection_kills_a_node() -> None:
    table = NodeTable(timeout_s=10)
    old = table.register(record(b"n1"), now=0)
    new = table.register(record(b"n1"), now=1)  # re-registered before the old close arrived
    assert table.disconnected(b"n1", old, now=2) == []
    assert table.nodes[b"n1"]["alive"]
    (died,) = table.disconnected(b"n1", new, now=3)
    assert died == NodeDied(b"n1", "its raylet disconnected")


def test_dead_nodes_beyond_the_bound_are_forgotten_oldest_first() -> None:
    table = NodeTable(timeout_s=10, max_dead=2)
    epochs = {i: table.register(record(bytes([i])), now=0) for i in range(4)}
    assert table.disconnected(b"\0", epochs[0], now=1) == [
        NodeDied(b"\0", "its raylet disconnected")]
    table.disconnected(b"\1", epochs[1], now=2)
    actions = table.disconnected(b"\2", epochs[2], now=3)
    assert actions[1:] == [NodeForgotten(b"\0")]
    assert set(table.nodes) == {b"\1", b"\2", b"\3"}
    assert table.stats() == {"alive": 1, "suspect": 0, "dead": 2, "dead_forgotten": 1}


def test_reloaded_records_get_time_to_reconnect() -> None:
    table = NodeTable(timeout_s=10)
    table.reloaded({**record(b"n1"), "alive": True, "last_heartbeat": 0.0}, now=100)
    assert table.tick(now=105) == []
    assert table.heartbeat(b"n1", now=106)


def test_the_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        NodeTable(timeout_s=0)
