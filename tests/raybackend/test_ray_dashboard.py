"""The dashboard's API and pages inside a real Jupyter server, reading a real Ray cluster."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from helpers import CHROMIUM, chromium_page
from tornado.httpclient import HTTPClientError

from cellfleet.extension import discovery

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_driver(ray_cluster):
    """This test process as a driver of the Ray cluster, with some tasks, an actor, an object."""
    import ray

    ray.init(address=ray_cluster["address"], namespace="cellfleet-dashboard-tests",
             log_to_driver=False, configure_logging=False, _node_ip_address="127.0.0.1")

    @ray.remote
    def inc(x):
        return x + 1

    @ray.remote
    class Counter:
        def add(self):
            return 1

    assert ray.get([inc.remote(i) for i in range(3)]) == [1, 2, 3]
    counter = Counter.options(name="dashboard-counter").remote()
    assert ray.get(counter.add.remote()) == 1
    held = ray.put(b"x" * 200_000)
    yield {"counter": counter, "held": held}
    ray.shutdown()


async def get(jp_fetch, *parts, **params):
    response = await jp_fetch("cellfleet", "api", *parts, params=params)
    assert response.code == 200
    return json.loads(response.body)


async def until(fetch, check, timeout=30.0, what="the answer"):
    """``await fetch()`` until ``check`` holds for it (Ray reports task events each second)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await fetch()
        if check(answer):
            return answer
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {answer}"
        await asyncio.sleep(0.2)  # polling the state API, not synchronization


async def test_the_api_and_pages_read_ray_through_the_same_views(jp_fetch, ray_cluster,
                                                                   ray_driver):
    discovery.register_cluster(ray_cluster["address"], "", backend="ray",
                               state_url=ray_cluster["dashboard"])
    clusters = (await get(jp_fetch, "clusters"))["clusters"]
    (mine,) = [c for c in clusters if c["address"] == ray_cluster["address"]]
    assert mine["backend"] == "ray"
    assert any(line.startswith("Argument edges") for line in mine["limits"])
    cid = mine["id"]

    (node,) = (await get(jp_fetch, "clusters", cid, "nodes"))["nodes"]
    assert node["alive"] and node["resources"]["CPU"] == 2.0

    tasks = await until(lambda: get(jp_fetch, "clusters", cid, "tasks", name="inc",
                                    state="FINISHED"),
                        lambda a: a["total"] >= 3, what="3 finished inc tasks")
    assert all(t["node_id"] and t["worker_pid"] for t in tasks["tasks"])

    graph = await get(jp_fetch, "clusters", cid, "graph")
    returns = [e for e in graph["edges"] if e["kind"] == "return"]
    assert returns and not [e for e in graph["edges"] if e["kind"] == "arg"]  # Ray has none

    view = await until(lambda: get(jp_fetch, "clusters", cid, "view"),
                       lambda a: any("inc" in (n.get("label") or "") for n in a["nodes"]),
                       what="inc in the graph view")
    assert view["version"] >= 1

    actors = (await get(jp_fetch, "clusters", cid, "actors"))["actors"]
    assert any(a["name"] == "dashboard-counter" and a["state"] == "ALIVE" for a in actors)

    objects = await get(jp_fetch, "clusters", cid, "objects")
    assert any(o["size"] >= 200_000 for o in objects["largest"]), objects["largest"]

    timeline = await get(jp_fetch, "clusters", cid, "timeline")
    assert any(s["name"] == "inc" for s in timeline["spans"]), timeline
    overview = await get(jp_fetch, "clusters", cid, "overview")
    assert any(f["name"] == "inc" for f in overview["functions"])

    page = await jp_fetch("cellfleet", "dashboard", cid, "graph")
    text = page.body.decode()
    assert "Not shown for this cluster" in text and "Argument edges" in text
    assert "/user/alice/cellfleet/api/clusters/" in text  # under the server's base_url

    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("cellfleet", "api", "clusters", cid, "cancel", method="POST",
                       body=json.dumps({"task_id": "ab" * 16}))
    assert refused.value.code == 409
    assert b"interrupt its cell" in refused.value.response.body


ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no chromium at {CHROMIUM}")
async def test_the_graph_page_draws_a_ray_cluster_in_a_browser(jp_fetch, jp_serverapp,
                                                               jp_http_port, jp_base_url,
                                                               ray_cluster, ray_driver):
    discovery.register_cluster(ray_cluster["address"], "", backend="ray",
                               state_url=ray_cluster["dashboard"])
    cid = discovery.cluster_id(ray_cluster["address"])
    url = (f"http://127.0.0.1:{jp_http_port}{jp_base_url}cellfleet/dashboard/{cid}/graph"
           f"?token={jp_serverapp.identity_provider.token}")
    errors: list[str] = []
    async with chromium_page(errors) as page:  # the dashboard tests' own headless Chromium
        await page.goto(url)
        finished = ("document.querySelectorAll('.cf-node[data-state=FINISHED]').length"
                    " >= 3")
        await until(lambda: page.evaluate(finished), bool, what="finished tasks drawn")
        assert (await page.text_content("#status")).startswith("live")
        limits = await page.text_content(".limits")
        assert "Argument edges" in limits and "Placement reasons" in limits
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "page-graph-ray.png"))
    assert errors == []
