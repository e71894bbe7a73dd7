"""The dashboard's JSON API inside a real Jupyter server, against a real cluster."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
from tornado.httpclient import HTTPClientError

import cellfleet
from cellfleet.extension import discovery

pytestmark = pytest.mark.integration


@cellfleet.remote
def inc(x):
    print("inc", x)
    return x + 1


@cellfleet.remote
def boom():
    raise ValueError("kaput")


@cellfleet.remote
class Counter:
    def __init__(self):
        self.n = 0

    def add(self):
        self.n += 1
        return self.n


async def get(jp_fetch, *parts, **params):
    response = await jp_fetch("cellfleet", "api", *parts, params=params)
    assert response.code == 200
    return json.loads(response.body)


async def cluster_id(jp_fetch, info) -> str:
    clusters = (await get(jp_fetch, "clusters"))["clusters"]
    mine = [c for c in clusters if c["address"] == info["gcs_address"]]
    assert len(mine) == 1, clusters
    return mine[0]["id"]


# -- discovery ---------------------------------------------------------------------------------


def test_register_and_drop_dead_entries(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    token = tmp_path / "token"
    token.write_text("x" * 64)
    path = discovery.register_cluster("127.0.0.1:1", token, kernel_id="k1")
    assert path.parent == tmp_path and path.name.startswith("cellfleet-cluster-")
    found = {c.address: c for c in discovery.list_clusters()}
    assert found["127.0.0.1:1"].kernel_id == "k1"
    assert found["127.0.0.1:1"].source == "kernel"
    assert cluster["gcs_address"] in found  # the session of cellfleet.init()
    # an entry whose process is gone is dropped, file and all
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    dead_path = discovery.register_cluster("127.0.0.1:2", token, pid=dead.pid)
    addresses = [c.address for c in discovery.list_clusters()]
    assert "127.0.0.1:2" not in addresses and not dead_path.exists()
    discovery.unregister_cluster("127.0.0.1:1")
    assert not path.exists()
    assert "127.0.0.1:1" not in [c.address for c in discovery.list_clusters()]
    discovery.unregister_cluster("127.0.0.1:1")  # idempotent


def test_sessions_of_dead_clusters_are_not_listed(cluster, tmp_path, monkeypatch):
    fake = tmp_path / "session_fake"
    fake.mkdir()
    (fake / "token").write_text("t")
    (fake / "cluster.json").write_text(json.dumps({"gcs_address": "127.0.0.1:3",
                                                   "pids": [2**22 + 12345]}))
    monkeypatch.setenv("CELLFLEET_TMPDIR", str(tmp_path))
    assert all(
        c.address != "127.0.0.1:3" for c in discovery.list_clusters())


# -- API ---------------------------------------------------------------------------------------


async def test_clusters_and_nodes(jp_fetch, cluster):
    cid = await cluster_id(jp_fetch, cluster)
    nodes = (await get(jp_fetch, "clusters", cid, "nodes"))["nodes"]
    assert len(nodes) == 1
    node = nodes[0]
    assert node["node_id"] == cluster["node_id"] and node["alive"]
    assert node["resources"]["CPU"] == 2.0
    assert "CPU" in node["resources_used"] and "capacity" in node["store"]


async def test_unknown_cluster_is_404(jp_fetch, cluster):
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("cellfleet", "api", "clusters", "nope", "nodes")
    assert err.value.code == 404


async def test_tasks_filter_and_paging(jp_fetch, cluster):
    tag = f"t{time.time_ns()}"
    refs = [inc.remote(i) for i in range(5)]
    assert cellfleet.get(refs) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        cellfleet.get(boom.remote())
    cid = await cluster_id(jp_fetch, cluster)

    async def finished():
        return (await get(jp_fetch, "clusters", cid, "tasks", name="inc", state="FINISHED"))

    deadline = time.monotonic() + 10
    while (await finished())["total"] < 5:
        assert time.monotonic() < deadline
        await _sleep(0.1)
    page = await get(jp_fetch, "clusters", cid, "tasks", name="inc", offset=1, limit=2)
    assert page["total"] >= 5 and len(page["tasks"]) == 2 and page["offset"] == 1
    assert all(t["name"] == "inc" for t in page["tasks"])

    async def failed_listed():  # its end reaches the GCS with the owner's next events
        failed = await get(jp_fetch, "clusters", cid, "tasks", state="FAILED")
        return any("kaput" in (t.get("error_message") or "") for t in failed["tasks"])

    await until(failed_listed)
    none = await get(jp_fetch, "clusters", cid, "tasks", tag=tag)
    assert none["total"] == 0


async def _sleep(seconds):
    await asyncio.sleep(seconds)


async def until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {predicate.__name__}"
        await asyncio.sleep(0.1)


async def test_graph_edges_and_cursor(jp_fetch, cluster):
    cid = await cluster_id(jp_fetch, cluster)
    first = await get(jp_fetch, "clusters", cid, "graph")
    a = inc.remote(10)
    b = inc.remote(a)
    assert cellfleet.get(b) == 12
    deadline = time.monotonic() + 10
    while True:
        later = await get(jp_fetch, "clusters", cid, "graph", since=first["cursor"])
        ids = {t["id"] for t in later["tasks"]}
        if a.task_id() in ids and b.task_id() in ids and all(
                t["state"] == "FINISHED" for t in later["tasks"] if t["id"] in ids):
            break
        assert time.monotonic() < deadline, later
        await _sleep(0.1)
    # b takes a's return: task a -> object a -> task b
    assert {"source": a.task_id(), "target": a.hex(), "kind": "return"} in later["edges"]
    assert {"source": a.hex(), "target": b.task_id(), "kind": "arg"} in later["edges"]
    assert a.hex() in {o["id"] for o in later["objects"]}
    assert later["cursor"] >= first["cursor"] and later["counts"]["inc"]["FINISHED"] >= 2
    # nothing changed since the new cursor
    again = await get(jp_fetch, "clusters", cid, "graph", since=later["cursor"])
    assert a.task_id() not in {t["id"] for t in again["tasks"]}


async def test_actors_objects_timeline_logs(jp_fetch, cluster):
    cid = await cluster_id(jp_fetch, cluster)
    counter = Counter.remote()
    assert cellfleet.get(counter.add.remote()) == 1
    big = cellfleet.put(b"x" * 300_000)
    mine: list[dict] = []

    async def counter_idle():  # the call's end reaches the GCS with the owner's next events
        actors = (await get(jp_fetch, "clusters", cid, "actors"))["actors"]
        mine[:] = [x for x in actors if x["class_name"] == "Counter"]
        return mine and mine[0]["state"] == "ALIVE" and mine[0]["pending_calls"] == 0

    await until(counter_idle)
    actor_pid = mine[0]["pid"]

    async def big_listed():
        objects = await get(jp_fetch, "clusters", cid, "objects")
        assert objects["nodes"][0]["node_id"] == cluster["node_id"]
        assert {"spilled", "spilled_total", "restored_total"} <= set(objects["nodes"][0])
        return big.hex() in [o["object_id"] for o in objects["largest"]]

    await until(big_listed)

    async def span_listed():
        spans = (await get(jp_fetch, "clusters", cid, "timeline"))["spans"]
        return any(s["name"] == "Counter.add" and s["end"] and s["end"] >= s["start"]
                   and s["worker"].endswith(f":{actor_pid}") for s in spans)

    await until(span_listed)
    assert cellfleet.get(inc.remote(41)) == 42

    async def logged():
        logs = await get(jp_fetch, "clusters", cid, "logs")
        return any("inc 41" in line for lines in logs["files"].values() for line in lines)

    await until(logged)


async def test_refused_without_auth(http_server_client, jp_base_url, cluster):
    base = f"{jp_base_url}cellfleet/"
    for path in ("api/clusters", "api/clusters/x/tasks", "api/clusters/x/graph"):
        response = await http_server_client.fetch(base + path, raise_error=False)
        assert response.code == 403, path
    response = await http_server_client.fetch(base + "dashboard/", raise_error=False,
                                              follow_redirects=False)
    assert response.code in (302, 403)
    response = await http_server_client.fetch(  # a wrong token is no better
        base + "api/clusters", headers={"Authorization": "token nope"}, raise_error=False)
    assert response.code == 403


async def test_pages_render(jp_fetch, cluster):
    cid = await cluster_id(jp_fetch, cluster)
    index = await jp_fetch("cellfleet", "dashboard", cid + "/")
    body = index.body.decode()
    for page in ("graph", "timeline", "actors", "objects", "nodes"):
        assert f"/user/alice/cellfleet/dashboard/{cid}/{page}" in body
        html = (await jp_fetch("cellfleet", "dashboard", cid, page)).body.decode()
        assert f"/user/alice/cellfleet/api/clusters/{cid}/" in html
        uses_bokeh = "/user/alice/cellfleet/static/bokeh/bokeh.min.js" in html
        assert uses_bokeh == (page in ("timeline", "objects")), page
    js = await jp_fetch("cellfleet", "static", "bokeh", "bokeh.min.js")
    assert js.code == 200 and len(js.body) > 100_000
    graph = await jp_fetch("cellfleet", "static", "taskgraph.js")
    assert b"export function createGraph" in graph.body and b"dagre" in graph.body
    dark = (await jp_fetch("cellfleet", "dashboard", cid, "nodes", params={"theme": "dark"}))
    assert b"--bg: #111111" in dark.body


async def test_view_overview_and_cursor(jp_fetch, cluster):
    cid = await cluster_id(jp_fetch, cluster)
    refs = [inc.remote(i) for i in range(3)]
    assert cellfleet.get(refs) == [1, 2, 3]

    views = []

    async def drawn():
        views.append(await get(jp_fetch, "clusters", cid, "view"))
        done = [n for n in views[-1]["nodes"] if n["label"] == "inc" and n["state"] == "FINISHED"]
        return len(done) >= 3

    await until(drawn)
    view = views[-1]
    again = await get(jp_fetch, "clusters", cid, "view", version=view["version"])
    assert again == {"version": view["version"], "unchanged": True}
    overview = await get(jp_fetch, "clusters", cid, "overview")
    inc_row = next(f for f in overview["functions"] if f["name"] == "inc")
    assert inc_row["states"]["FINISHED"] >= 3
    assert overview["nodes"][0]["cpu"] == 2


# -- standalone ------------------------------------------------------------------------------


async def test_standalone_dashboard_requires_its_token(cluster, jp_asyncio_loop):
    from tornado.httpclient import AsyncHTTPClient
    from tornado.testing import bind_unused_port

    from cellfleet.extension.standalone import make_app

    app = make_app("sekret", cluster["gcs_address"])
    sock, port = bind_unused_port()
    from tornado.httpserver import HTTPServer

    server = HTTPServer(app)
    server.add_sockets([sock])
    client = AsyncHTTPClient()
    base = f"http://127.0.0.1:{port}/cellfleet/"
    try:
        refused = await client.fetch(base + "api/clusters", raise_error=False)
        assert refused.code == 403
        ok = await client.fetch(base + "api/clusters?token=sekret")
        clusters = json.loads(ok.body)["clusters"]
        assert [c["address"] for c in clusters] == [cluster["gcs_address"]]
        cid = clusters[0]["id"]
        nodes = await client.fetch(base + f"api/clusters/{cid}/nodes",
                                   headers={"Authorization": "token sekret"})
        assert json.loads(nodes.body)["nodes"][0]["node_id"] == cluster["node_id"]
        page = await client.fetch(base + f"dashboard/{cid}/graph?token=sekret")
        assert b"/cellfleet/static/taskgraph.js" in page.body
        module = await client.fetch(base + "static/taskgraph.js?token=sekret")
        assert b"export function createGraph" in module.body
    finally:
        server.stop()


async def test_objects_history_from_before_the_first_page_load(jp_fetch, cluster):
    """The server samples every cluster's store from its start: the first request of the
    objects page already gets the history (no page was open to ask for it)."""
    from cellfleet.extension import data, live

    cid = await cluster_id(jp_fetch, cluster)
    info = discovery.find_cluster(cid)
    state = live.state_of(info)

    async def sampled():
        return sum(len(points) for points in state.usage.values()) >= 2

    await until(sampled, timeout=4 * data.SAMPLE_S + 5)
    opened = time.time()
    objects = await get(jp_fetch, "clusters", cid, "objects")
    (points,) = objects["history"].values()
    assert len(points) >= 2 and points[0][0] <= opened - data.SAMPLE_S / 2


async def test_cancel_needs_a_task_id_and_a_notebook_that_submitted_it(jp_fetch, cluster):
    cid = await cluster_id(jp_fetch, cluster)
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("cellfleet", "api", "clusters", cid, "cancel", method="POST",
                       body=json.dumps({"task_id": "nope"}))
    assert err.value.code == 400
    with pytest.raises(HTTPClientError) as err:  # this process submitted it, not a notebook
        await jp_fetch("cellfleet", "api", "clusters", cid, "cancel", method="POST",
                       body=json.dumps({"task_id": inc.remote(1).task_id()}))
    assert err.value.code == 409
    assert "no notebook kernel of this Jupyter server" in err.value.response.body.decode()


@cellfleet.remote
def nap(seconds):
    time.sleep(seconds)


async def test_a_cancelled_tasks_record_says_cancelled(jp_fetch, cluster):
    """Its worker reports the KeyboardInterrupt that stopped it; the API says what its
    owner's get raises."""
    cid = await cluster_id(jp_fetch, cluster)
    ref = nap.remote(60)

    async def running():
        found = await get(jp_fetch, "clusters", cid, "tasks", name="nap", state="RUNNING")
        return any(t["task_id"] == ref.task_id() for t in found["tasks"])

    await until(running)
    cellfleet.cancel(ref)
    with pytest.raises(cellfleet.exceptions.TaskCancelledError):
        cellfleet.get(ref, timeout=10)
    records: list[dict] = []

    async def ended():
        found = await get(jp_fetch, "clusters", cid, "tasks", name="nap", state="FAILED")
        records[:] = [t for t in found["tasks"] if t["task_id"] == ref.task_id()]
        return bool(records)

    await until(ended)
    (record,) = records
    assert record["cancelled"] and record["error_message"].startswith("TaskCancelledError")
    assert "KeyboardInterrupt" not in record["error_message"]


def test_store_rows_carry_spilling_counts_and_transfers_under_way():
    from cellfleet.extension.data import _store_rows

    pull = {"object_id": "ab" * 20, "size": 100, "received": 40}
    rows = _store_rows([{"node_id": b"\x01" * 16, "store": {
        "used": 5, "capacity": 10, "num_objects": 1, "spilled_bytes": 3, "spilled_total": 4,
        "restored_total": 2, "pulls": [pull]}}, {"node_id": b"\x02" * 16, "store": {}}])
    first, second = rows["01" * 16], rows["02" * 16]
    assert (first["spilled_total"], first["restored_total"], first["pulls"]) == (4, 2, [pull])
    assert (second["spilled"], second["pulls"]) == (0, [])  # an older raylet's heartbeat
