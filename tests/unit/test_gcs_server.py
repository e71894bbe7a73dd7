"""The GCS server's bounded tables: pub/sub backlogs, the log history, finished jobs."""

from __future__ import annotations

import asyncio

from cellfleet import _messages as m
from cellfleet.gcs.server import LOG_HISTORY, LOG_HISTORY_BYTES, MAX_SUBSCRIBER_BACKLOG, GcsServer
from cellfleet.gcs.storage import MemoryStorage


class FakeConnection:
    def __init__(self, unsent_bytes: int) -> None:
        self.unsent_bytes = unsent_bytes
        self.sent: list[m.Message] = []

    def send(self, message: m.Message) -> None:
        self.sent.append(message)


def test_a_stalled_subscriber_misses_observability_but_not_state() -> None:
    gcs = GcsServer(MemoryStorage())
    reading, stalled = FakeConnection(0), FakeConnection(MAX_SUBSCRIBER_BACKLOG + 1)
    for channel in ("logs", "tasks", "exits", "actor"):
        gcs.subscribers[channel] = {reading, stalled}
        gcs.publish(channel, ["data"])
    assert [msg.channel for msg in reading.sent] == ["logs", "tasks", "exits", "actor"]
    assert [msg.channel for msg in stalled.sent] == ["exits", "actor"]
    assert gcs.table_stats()["dropped_publications"] == {"logs": 1, "tasks": 1}


def test_the_log_history_is_bounded_in_lines_and_bytes() -> None:
    gcs = GcsServer(MemoryStorage())
    big = "x" * (LOG_HISTORY_BYTES // 4)
    gcs.add_logs(None, m.AddLogs([[1, "", b"", "f", 1, "stdout", big] for _ in range(10)]))
    assert len(gcs.logs) == 4
    gcs.add_logs(None, m.AddLogs([[1, "", b"", "f", 1, "stdout", "y"]] * (LOG_HISTORY + 5)))
    assert len(gcs.logs) == LOG_HISTORY and all(line[-1] == "y" for line in gcs.logs)


class FakeDriver:
    """A job's connection: the GCS only uses it as a key."""


def test_finished_jobs_beyond_the_bound_are_forgotten_and_ids_never_reused() -> None:
    async def scenario() -> tuple[list[int], int, dict]:
        gcs = GcsServer(MemoryStorage())
        gcs.finished_jobs.limit = 2
        ids = []
        for _ in range(4):
            ids.append(await gcs.register_job(FakeDriver(), m.RegisterJob("a", 1, "", "x")))
            await gcs._finish_job(ids[-1])
        await asyncio.sleep(0)  # the storage deletions
        next_id = await gcs.register_job(FakeDriver(), m.RegisterJob("a", 1, "", "x"))
        stored = await gcs.storage.load("jobs")
        return ids + [next_id], sorted(gcs.jobs), {"stored": sorted(stored),
                                                   "stats": gcs.table_stats()["jobs"]}

    ids, kept, rest = asyncio.run(scenario())
    assert ids == [1, 2, 3, 4, 5]
    assert kept == [3, 4, 5]
    assert rest == {"stored": [b"3", b"4", b"5"], "stats": {"total": 3, "finished_forgotten": 2}}


def test_a_driver_subscribed_to_its_jobs_logs_is_sent_only_those() -> None:
    gcs = GcsServer(MemoryStorage())
    job1, job2, dashboard = FakeConnection(0), FakeConnection(0), FakeConnection(0)
    gcs.subscribe(job1, m.Subscribe("logs", 1))
    gcs.subscribe(job2, m.Subscribe("logs", 2))
    gcs.subscribe(dashboard, m.Subscribe("logs"))  # every job's
    lines = [[1, "", b"", "f", 1, "stdout", "one"], [2, "", b"", "g", 2, "stdout", "two"]]
    gcs.add_logs(None, m.AddLogs(lines))
    gcs.add_logs(None, m.AddLogs([lines[1]]))
    assert [[line[-1] for line in msg.data] for msg in job1.sent] == [["one"]]
    assert [[line[-1] for line in msg.data] for msg in job2.sent] == [["two"], ["two"]]
    assert [len(msg.data) for msg in dashboard.sent] == [2, 1]
    gcs.connection_closed(job1)
    assert job1 not in gcs._log_jobs


def test_a_joining_node_is_broadcast_at_once_not_after_the_window() -> None:
    """Work waiting for a node that joins goes there without waiting RESOURCES_PUBLISH_S."""
    from cellfleet import __version__

    async def join() -> list[m.Message]:
        gcs = GcsServer(MemoryStorage())
        raylet = FakeConnection(0)
        gcs.subscribe(raylet, m.Subscribe("resources"))
        await gcs.register_node(raylet, m.RegisterNode(b"\x01" * 16, "127.0.0.2:1", {"CPU": 1.0},
                                                       "store", 100, "/tmp/s", __version__))
        return raylet.sent

    sent = asyncio.run(join())
    assert [(msg.channel, [row["node_id"] for row in msg.data]) for msg in sent] == \
        [("resources", [b"\x01" * 16])]
