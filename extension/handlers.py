"""Tornado handlers for the JSON API and the dashboard pages.

The same handler logic serves two hosts: Jupyter's server (``JupyterHandler`` bases, Jupyter's
authentication and authorization) and ``cellfleet dashboard`` (a token of its own). Routes,
relative to a base URL::

    cellfleet/api/clusters
    cellfleet/api/clusters/<id>/(nodes|tasks|graph|view|overview|actors|objects|timeline|logs)
    cellfleet/api/clusters/<id>/cancel    POST {"task_id": hex}: through the notebook's kernel
    cellfleet/dashboard/                  clusters, with links
    cellfleet/dashboard/<id>/             a cluster's overview
    cellfleet/dashboard/<id>/<page>       graph, timeline, actors, objects, nodes
    cellfleet/static/bokeh/<file>         BokehJS, served from the installed bokeh package
    cellfleet/static/taskgraph.(js|css)   the task-graph component (the widget's ES module)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import tornado.web
from bokeh.util.paths import bokehjs_path

from . import data, pages
from .discovery import ClusterInfo, find_cluster, list_clusters

__all__ = ["API_ENDPOINTS", "routes"]

API_ENDPOINTS = ("nodes", "tasks", "graph", "view", "overview", "actors", "objects", "timeline",
                 "logs")


FOUND_TTL_S = 2.0
_found: dict[str, tuple[float, ClusterInfo]] = {}  # cluster id -> (when, cluster)


def _float(value: str | None, default: float) -> float:
    try:
        return float(value) if value not in (None, "") else default
    except ValueError:
        raise tornado.web.HTTPError(400, f"not a number: {value!r}") from None


def _int(value: str | None, default: int, low: int = 0, high: int = 1_000_000) -> int:
    try:
        number = int(value) if value not in (None, "") else default
    except ValueError:
        raise tornado.web.HTTPError(400, f"not an integer: {value!r}") from None
    return max(low, min(high, number))


class _Logic:
    """Handler bodies, independent of the host's authentication."""

    base_path: str = "/"
    get_query_argument: Callable[..., Any]
    finish: Callable[..., Any]
    set_header: Callable[..., Any]

    settings: dict

    def _clusters(self) -> list[ClusterInfo]:
        """The clusters shown: discovery's, or the host's ``cellfleet_clusters`` setting."""
        source = self.settings.get("cellfleet_clusters")
        return source() if source is not None else list_clusters()

    def _cluster(self, cid: str) -> ClusterInfo:
        """A cluster by id; found ones are remembered ``FOUND_TTL_S`` (discovery reads files:
        not on every poll of every page)."""
        held = _found.get(cid)
        if held is not None and time.monotonic() - held[0] < FOUND_TTL_S:
            return held[1]
        source = self.settings.get("cellfleet_clusters")
        if source is None:
            cluster = find_cluster(cid)
        else:
            cluster = next((c for c in source() if c.id == cid), None)
        if cluster is None:
            raise tornado.web.HTTPError(404, f"no running cluster {cid}")
        _found[cid] = (time.monotonic(), cluster)
        while len(_found) > 64:
            del _found[next(iter(_found))]
        return cluster

    def _json(self, value: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(value, default=str))

    async def _notebooks(self) -> dict[str, str]:
        """Kernel id -> notebook path, for this server's kernels."""
        notebooks = {}
        sessions = self.settings.get("session_manager")
        if sessions is not None:
            for session in await sessions.list_sessions():
                kernel = session.get("kernel") or {}
                notebooks[kernel.get("id")] = session.get("path")
        return notebooks

    async def clusters_body(self) -> None:
        """Every cluster; those of this server's kernels carry their notebook's path."""
        notebooks = await self._notebooks()
        out = []
        for cluster in self._clusters():
            entry = cluster.to_json()
            entry["notebook"] = notebooks.get(cluster.kernel_id) if cluster.kernel_id else None
            entry["this_server"] = bool(cluster.kernel_id) and cluster.kernel_id in notebooks
            entry["limits"] = data.limits(cluster)
            out.append(entry)
        self._json({"clusters": out})

    async def api_body(self, cid: str, endpoint: str) -> None:
        cluster = self._cluster(cid)
        q = self.get_query_argument
        try:
            if endpoint == "nodes":
                result: Any = {"nodes": await data.nodes(cluster)}
            elif endpoint == "tasks":
                result = await data.tasks(
                    cluster, state=q("state", None), name=q("name", None), tag=q("tag", None),
                    offset=_int(q("offset", None), 0), limit=_int(q("limit", None), 100, 1),
                )
            elif endpoint == "graph":
                result = await data.graph(cluster, since=_float(q("since", None), 0.0),
                                          max_tasks=_int(q("max_tasks", None), 2000))
            elif endpoint == "view":
                expanded = {k for k in (q("expanded", None) or "").split(",") if k}
                result = await data.view(cluster, expanded=expanded,
                                         version=_int(q("version", None), -1, -1, 2**62),
                                         kernel_manager=self.settings.get("kernel_manager"))
            elif endpoint == "overview":
                result = await data.overview(cluster, self.settings.get("kernel_manager"))
            elif endpoint == "actors":
                result = {"actors": await data.actors(cluster)}
            elif endpoint == "objects":
                names = {k: v.rsplit("/", 1)[-1] for k, v in (await self._notebooks()).items()
                         if k and v}
                result = await data.objects(cluster, largest=_int(q("largest", None), 20, 1, 200),
                                            kernel_manager=self.settings.get("kernel_manager"),
                                            names=names)
            elif endpoint == "timeline":
                result = await data.timeline(cluster, since=_float(q("since", None), 0.0),
                                             cursor=_int(q("cursor", None), 0, 0, 2**62))
            elif endpoint == "logs":
                offset = q("offset", None)
                result = await data.logs(cluster, wait=_float(q("wait", None), 0.0),
                                         tail=_int(q("tail", None), 200, 1, 10_000),
                                         file=q("file", None),
                                         offset=None if offset in (None, "") else
                                         _int(offset, 0, 0, 2**62))
            else:
                raise tornado.web.HTTPError(404)
        except ConnectionError as exc:
            raise tornado.web.HTTPError(502, f"cluster {cid} unreachable: {exc}") from None
        self._json(result)

    async def cancel_body(self, cid: str) -> None:
        """POST ``{"task_id": HEX}``: cancel the task through the notebook that submitted it."""
        cluster = self._cluster(cid)
        try:
            task_id = str(json.loads(self.request.body or b"{}").get("task_id", ""))
        except (ValueError, AttributeError):
            raise tornado.web.HTTPError(400, 'send JSON: {"task_id": "<32 hex digits>"}') \
                from None
        if len(task_id) != 32 or any(c not in "0123456789abcdef" for c in task_id):
            raise tornado.web.HTTPError(400, f"not a task id: {task_id!r} (32 hex digits)")
        try:
            result = await data.cancel(cluster, task_id, self.settings.get("kernel_manager"))
        except data.NotCancelled as exc:
            self.set_status(409)
            self._json({"cancelled": None, "error": str(exc)})
            return
        self._json(result)

    async def page_body(self, cid: str | None, page: str | None) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        theme = "dark" if self.get_query_argument("theme", "light") == "dark" else "light"
        if not cid:
            self.finish(pages.cluster_list(self.base_path, self._clusters(), theme))
            return
        cluster = self._cluster(cid)
        page = page or "index"
        if page not in pages.PAGES and page != "index":
            raise tornado.web.HTTPError(404, f"no dashboard page {page}")
        notebook = (await self._notebooks()).get(cluster.kernel_id) if cluster.kernel_id else None
        self.finish(pages.render(page, self.base_path, cluster, theme, notebook=notebook,
                                 xsrf=self.xsrf_token.decode(), limits=data.limits(cluster)))

    async def component_body(self, kind: str) -> None:
        from cellfleet.widgets.assets import css_source, esm_source

        if kind == "js":
            self.set_header("Content-Type", "text/javascript; charset=utf-8")
            self.finish(esm_source())
        else:
            self.set_header("Content-Type", "text/css; charset=utf-8")
            self.finish(css_source())


def routes(base_url: str, api_base: type, page_base: type,
           wrap: Callable[[Callable], Callable],
           static_base: type = tornado.web.StaticFileHandler) -> list[tuple]:
    """Tornado routes under ``base_url``; ``api_base``/``page_base`` are the host's handler
    classes and ``wrap`` its authentication decorator for ``get``."""
    root = base_url.rstrip("/") + "/"

    def handler(name: str, body: Callable, base: type = api_base, method: str = "get") -> type:
        async def call(self, *args):
            await body(self, *args)

        return type(name, (_Logic, base), {method: wrap(call), "base_path": root})

    async def clusters(self):
        await self.clusters_body()

    async def api(self, cid, endpoint):
        await self.api_body(cid, endpoint)

    async def cancel(self, cid):
        await self.cancel_body(cid)

    async def page(self, cid=None, name=None):
        await self.page_body(cid, name)

    async def component(self, kind):
        await self.component_body(kind)

    endpoints = "|".join(API_ENDPOINTS)
    pages_re = "|".join(pages.PAGES)
    return [
        (rf"{root}cellfleet/api/clusters/?", handler("ClustersHandler", clusters)),
        (rf"{root}cellfleet/api/clusters/(\w+)/({endpoints})/?", handler("ApiHandler", api)),
        (rf"{root}cellfleet/api/clusters/(\w+)/cancel/?",
         handler("CancelHandler", cancel, method="post")),
        (rf"{root}cellfleet/dashboard/?", handler("ListPage", page, page_base)),
        (rf"{root}cellfleet/dashboard/(\w+)/?()", handler("IndexPage", page, page_base)),
        (rf"{root}cellfleet/dashboard/(\w+)/({pages_re})/?", handler("Page", page, page_base)),
        (rf"{root}cellfleet/static/taskgraph\.(js|css)", handler("Component", component,
                                                                page_base)),
        (rf"{root}cellfleet/static/bokeh/(.*)", static_base,
         {"path": str(bokehjs_path() / "js")}),
    ]
