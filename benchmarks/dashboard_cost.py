"""What the live views cost, with 10,000 tasks in the cluster.

0. The dashboard API over HTTP: a real ``cellfleet dashboard`` server process polled by a
   client as open pages poll it (every endpoint, four times a second) with ``--tasks`` tasks
   in the GCS while more finish. Median and p99 as the client measures them.
1. Dashboard polls: with ``--tasks`` tasks in the GCS, the latency of each request an open
   page makes once a second (``view``, ``overview``, ``timeline``, ``actors``), measured as the
   server extension runs them (GCS round trips through the incremental cursor plus the
   extension's work), while more tasks keep finishing. Median and p99.
2. The widget's feed: task throughput of bursts of no-op tasks with and without a
   ``TaskGraph(scope="all")``-style listener in the driver (the GCS pushes the changed groups'
   counts and a bounded sample of the changed records once a second), and the CPU time the
   feed's thread used per second.
3. The same for a cell's live strip (on by default in the kernel).
4. 100,000 tasks: the time to build a grouped view and its size (the widget stays fluid
   because what it draws is bounded).

    python benchmarks/dashboard_cost.py [--tasks 10000] [--polls 200] [--seconds 60]
                                        [--parts http,polls,feed,...]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time

import cellfleet as ray
from cellfleet.extension import data, discovery, live
from cellfleet.widgets.feed import feed
from cellfleet.widgets.model import GraphModel


@ray.remote
def noop():
    return None


@ray.remote
def stage(x):
    return x


def burst(n: int) -> float:
    start = time.perf_counter()
    ray.get([noop.remote() for _ in range(n)])
    return n / (time.perf_counter() - start)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _polls(cluster: discovery.ClusterInfo, polls: int) -> dict[str, list[float]]:
    cursors: dict[str, int] = {}
    requests = {
        "view": lambda: data.view(cluster, expanded=set()),
        "overview": lambda: data.overview(cluster),
        "timeline": lambda: data.timeline(cluster, since=time.time() - 600,
                                          cursor=cursors.get("timeline", 0)),
        "actors": lambda: data.actors(cluster),
    }
    out: dict[str, list[float]] = {name: [] for name in requests}
    for _ in range(polls):
        for name, request in requests.items():
            live.state_of(cluster).refreshed = 0.0  # every request reads through the cursor
            start = time.perf_counter()
            answer = await request()
            out[name].append(time.perf_counter() - start)
            if name == "timeline":  # as the page does: only what changed since its last poll
                cursors["timeline"] = answer["cursor"]
        await asyncio.sleep(0.02)
    return out


def dashboard_polls(cluster: discovery.ClusterInfo, tasks: int, polls: int) -> None:
    ray.get([noop.remote() for _ in range(tasks)])
    first = time.perf_counter()
    asyncio.run(data.view(cluster, expanded=set()))
    print(f"first view of {tasks:,} tasks (the whole table once): "
          f"{(time.perf_counter() - first) * 1000:.0f} ms")
    stop = threading.Event()
    worker = threading.Thread(target=_more_work, args=(stop,), daemon=True)
    worker.start()
    try:
        latencies = asyncio.run(_polls(cluster, polls))
    finally:
        stop.set()
        worker.join()
    for name, values in latencies.items():
        print(f"  {name:9s} poll: median {statistics.median(values) * 1000:5.1f} ms, "
              f"p99 {percentile(values, 0.99) * 1000:5.1f} ms over {len(values)} polls")


def dashboard_http(cluster: discovery.ClusterInfo, tasks: int, seconds: float) -> None:
    """The API as open pages see it: a real ``cellfleet dashboard`` server (its own process,
    the handlers Jupyter's server runs) polled over HTTP, every endpoint an open page polls
    four times a second, while tasks keep finishing; latency measured by the client."""
    ray.get([noop.remote() for _ in range(tasks)])
    token = secrets.token_urlsafe(16)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "cellfleet.extension.standalone", "--address", cluster.address,
         "--port", str(port), "--token", token], stdout=subprocess.PIPE, text=True)
    stop = threading.Event()
    worker = threading.Thread(target=_more_work, args=(stop,), daemon=True)
    try:
        server.stdout.readline()  # "cellfleet dashboard: http://..." once it listens
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": f"token {token}"}

        def get(path: str) -> tuple[float, dict]:
            start = time.perf_counter()
            conn.request("GET", f"/cellfleet/api/{path}", headers=headers)
            body = conn.getresponse().read()
            return time.perf_counter() - start, json.loads(body)

        cid = get("clusters")[1]["clusters"][0]["id"]
        api = f"clusters/{cid}/"
        cursor, version = 0, -1
        get(api + "view")  # the server's first read of the whole task table
        worker.start()
        out: dict[str, list[float]] = {}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            paths = {"view": f"view?version={version}", "overview": "overview",
                     "timeline": f"timeline?since={time.time() - 600}&cursor={cursor}",
                     "actors": "actors", "objects": "objects", "nodes": "nodes"}
            for name, path in paths.items():
                took, answer = get(api + path)
                out.setdefault(name, []).append(took)
                if name == "timeline":
                    cursor = answer["cursor"]
                elif name == "view":
                    version = answer["version"]
            time.sleep(0.25)
    finally:
        stop.set()
        if worker.is_alive():
            worker.join()
        server.terminate()
        server.wait()
    # a page's first request reads everything it shows (the timeline's 10 minutes of spans):
    # reported apart from the polls that follow
    print("  first requests: " + ", ".join(f"{name} {values[0] * 1000:.0f} ms"
                                           for name, values in out.items()))
    polls = {name: values[1:] for name, values in out.items()}
    every = [t for values in polls.values() for t in values]
    for name, values in [*polls.items(), ("all", every)]:
        print(f"  {name:9s} GET: median {statistics.median(values) * 1000:5.1f} ms, "
              f"p99 {percentile(values, 0.99) * 1000:5.1f} ms over {len(values)} requests")


def _more_work(stop: threading.Event) -> None:
    """Tasks keep finishing while the pages poll."""
    while not stop.is_set():
        ray.get([stage.remote(i) for i in range(50)])
        time.sleep(0.05)


def feed_cost(tasks: int, rounds: int, gcs_pid: int | None) -> None:
    """Rounds of a burst without any view (the feed's connection closed), then one with a live
    graph of the whole cluster, alternating so both see the same machine and GCS table. The
    GCS's CPU per burst is measured too: what it does for the view (the pushes) shows there."""
    burst(2000)
    source = feed()
    without, with_feed, shares = [], [], []
    gcs_without, gcs_with = [], []
    drawn = 0
    for _ in range(rounds):
        _settle(gcs_pid)
        gcs0 = _process_cpu(gcs_pid)
        without.append(burst(tasks))
        gcs_without.append(_process_cpu(gcs_pid) - gcs0)
        model = GraphModel("all")
        views: list[int] = []
        listener = source.add(model, lambda m=model, v=views: v.append(len(m.view()["nodes"])),
                              interval=0.5)
        thread = source._thread
        _settle(gcs_pid)
        wall = time.perf_counter()
        cpu0 = _thread_cpu(thread)
        gcs0 = _process_cpu(gcs_pid)
        with_feed.append(burst(tasks))
        gcs_with.append(_process_cpu(gcs_pid) - gcs0)
        shares.append((_thread_cpu(thread) - cpu0) / (time.perf_counter() - wall))
        source.remove(listener)
        drawn += len(views)
        deadline = time.monotonic() + 30
        while source._thread is not None and time.monotonic() < deadline:
            time.sleep(0.1)  # the connection closes when idle (IDLE_S): no view, no cost
    a, b = statistics.median(without), statistics.median(with_feed)
    print(f"tasks/s without a widget: {a:,.0f}  with a live TaskGraph(scope='all'): {b:,.0f}  "
          f"({100 * (a - b) / a:+.1f}% slower); the feed's thread used "
          f"{100 * statistics.median(shares):.1f}% of one core (max {100 * max(shares):.1f}%), "
          f"{drawn} views drawn; last model: {model.total():,} tasks counted, "
          f"{len(model.records):,} records held; the GCS's CPU per burst "
          f"{statistics.median(gcs_without):.2f} s without, {statistics.median(gcs_with):.2f} s "
          f"with")


def strip_cost(tasks: int, rounds: int, gcs_pid: int | None) -> None:
    """A cell's live strip (on by default in the kernel) while the cell runs the bursts:
    rounds without it and with it alternate, as in ``feed_cost``."""
    from cellfleet.core.core_worker import submission_tag
    from cellfleet.kernel.cellstrip import CellStrips

    shown: list[str] = []
    strips = CellStrips(lambda kind, content, parent: shown.append(kind), after=0.0)
    source = feed()
    without, with_strip, shares = [], [], []
    for round_ in range(rounds):
        _settle(gcs_pid)
        without.append(burst(tasks))
        tag = f"benchmark-cell-{round_}"
        token = submission_tag.set(tag)
        try:
            strips.cell_started(tag, {"header": {}})
            strip = strips._strips[tag]
            deadline = time.monotonic() + 5
            while strip.listener is None and time.monotonic() < deadline:
                time.sleep(0.01)
            thread = source._thread
            _settle(gcs_pid)
            wall = time.perf_counter()
            cpu0 = _thread_cpu(thread)
            with_strip.append(burst(tasks))
            shares.append((_thread_cpu(thread) - cpu0) / (time.perf_counter() - wall))
            strips.cell_finished(tag)
        finally:
            submission_tag.reset(token)
        deadline = time.monotonic() + 30
        while (tag in strips._strips or source._thread is not None) and \
                time.monotonic() < deadline:
            time.sleep(0.1)  # the strip settles into its summary, then the feed closes
    a, b = statistics.median(without), statistics.median(with_strip)
    print(f"tasks/s in a cell without its strip: {a:,.0f}  with it: {b:,.0f}  "
          f"({100 * (a - b) / a:+.1f}% slower); the feed's thread used "
          f"{100 * statistics.median(shares):.1f}% of one core (max {100 * max(shares):.1f}%), "
          f"{shown.count('update_display_data')} updates")


def _thread_cpu(thread: threading.Thread | None) -> float:
    """CPU seconds a thread has used (Linux: /proc/self/task/<tid>/stat)."""
    if thread is None or thread.native_id is None:
        return 0.0
    return _cpu_of(f"/proc/self/task/{thread.native_id}/stat")


def _settle(gcs_pid: int | None, deadline_s: float = 10.0) -> None:
    """Wait until the GCS has merged the last burst's events (under 10% of a core for 0.2 s),
    so every burst starts from a quiet GCS."""
    deadline = time.monotonic() + deadline_s
    while gcs_pid and time.monotonic() < deadline:
        before = _process_cpu(gcs_pid)
        time.sleep(0.2)
        if _process_cpu(gcs_pid) - before < 0.02:
            return


def _process_cpu(pid: int | None) -> float:
    return _cpu_of(f"/proc/{pid}/stat") if pid else 0.0


def _cpu_of(stat: str) -> float:
    with open(stat) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def grouped_view(n: int) -> None:
    model = GraphModel("all", max_tasks=n)
    start = time.perf_counter()
    events = []
    for i in range(n):
        tid = i.to_bytes(16, "big")
        events.append([tid, "PENDING_ARGS_AVAIL", 1.0, {
            "name": f"stage{i % 4}",
            "args": [(i - 1).to_bytes(16, "big").hex() + "01"] if i else [],
            "returns": [tid.hex() + "01"], "job_id": 1, "tag": "t"}])
        events.append([tid, "FINISHED", 2.0, {"start_time": 1.5, "end_time": 2.0}])
    model.add_events(events)
    ingest = time.perf_counter() - start
    start = time.perf_counter()
    view = model.view()
    build = time.perf_counter() - start
    size = len(json.dumps(view))
    print(f"{n:,} tasks: ingest {ingest:.2f} s ({2 * n / ingest:,.0f} events/s), grouped view "
          f"in {build * 1000:.0f} ms: {len(view['nodes'])} nodes, {len(view['edges'])} edges, "
          f"{size / 1024:.1f} KiB")


def _gcs_pid(cluster: discovery.ClusterInfo) -> int | None:
    """The GCS's pid, from the session's ``cluster.json`` (None: not found)."""
    try:
        with open(os.path.join(cluster.session_dir or "", "cluster.json")) as f:
            return json.load(f)["pids"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--polls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0, help="of HTTP polling")
    parser.add_argument("--parts", default="http,polls,feed,strip,grouped",
                        help="comma-separated: http, polls, feed, strip, grouped")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    info = ray.init(num_cpus=2)
    cluster = next(c for c in discovery.list_clusters() if c.address == info["gcs_address"])
    if "http" in parts:
        print(f"dashboard API over HTTP with {args.tasks:,} tasks in the cluster:")
        dashboard_http(cluster, args.tasks, args.seconds)
    if "polls" in parts:
        print(f"dashboard polls with {args.tasks:,} tasks in the cluster:")
        dashboard_polls(cluster, args.tasks, args.polls)
    if "feed" in parts:
        feed_cost(args.tasks, args.rounds, _gcs_pid(cluster))
    if "strip" in parts:
        strip_cost(args.tasks, args.rounds, _gcs_pid(cluster))
    ray.shutdown()
    if "grouped" in parts:
        grouped_view(100_000)


if __name__ == "__main__":
    main()
