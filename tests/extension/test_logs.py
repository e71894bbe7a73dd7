"""Log files paged with offsets and tail reads: never read whole (no cluster needed)."""

from __future__ import annotations

import asyncio

from cellfleet.extension import data
from cellfleet.extension.discovery import ClusterInfo


def _write(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))


def test_tail_reads_only_the_end_of_a_big_file(tmp_path):
    log = tmp_path / "worker-1.log"
    _write(log, (f"line {i:07d}" for i in range(500_000)))  # 6.5 MB
    lines, after, start = data.read_log(log, tail=3)
    assert lines == ["line 0499997", "line 0499998", "line 0499999"]
    assert after == log.stat().st_size and after - start <= data.MAX_LOG_BYTES
    # the first line of the window is cut by the window, so it is left out
    window, _, start = data.read_log(log, tail=10**6)
    assert window[0].startswith("line ") and len(window[0]) == 12
    assert len(window) == (after - start) // 13


def test_offsets_page_forward_in_whole_lines(tmp_path):
    log = tmp_path / "worker-2.log"
    _write(log, (f"l{i}" for i in range(10)))
    first, after, _ = data.read_log(log, tail=200, offset=0, max_bytes=10)
    assert first == ["l0", "l1", "l2"] and after == 9  # whole lines only
    rest, end, start = data.read_log(log, tail=200, offset=after, max_bytes=1000)
    assert start == 9 and rest == [f"l{i}" for i in range(3, 10)]
    with log.open("a") as f:
        f.write("new\n")
    assert data.read_log(log, tail=200, offset=end)[0] == ["new"]
    long = tmp_path / "long.log"
    long.write_text("x" * 50 + "\n")
    assert data.read_log(long, tail=1, offset=0, max_bytes=20)[:2] == (["x" * 20], 20)


def test_logs_endpoint_pages_one_file_and_refuses_other_paths(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    _write(logs / "a.log", ["one", "two"])
    (tmp_path / "secret.txt").write_text("no")
    cluster = ClusterInfo("c", "127.0.0.1:1", str(tmp_path / "token"), session_dir=str(tmp_path))
    got = asyncio.run(data.logs(cluster, tail=1))
    assert got["files"] == {"a.log": ["two"]} and got["offsets"] == {"a.log": 8}
    paged = asyncio.run(data.logs(cluster, file="a.log", offset=4))
    assert paged["files"] == {"a.log": ["two"]}
    for name in ("../secret.txt", "secret.txt"):
        assert asyncio.run(data.logs(cluster, file=name, offset=0))["files"] == {}
