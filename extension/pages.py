"""The dashboard pages: bokeh documents embedded standalone, kept live by polling the JSON API.

Each page is a bokeh layout whose ``ColumnDataSource``s have names; a small script fetches the
cluster's API once a second and replaces the sources' data, so the page updates without a
reload and without a bokeh server session per viewer (no websocket, no per-page Python
document on the server: an idle dashboard costs the GCS nothing but one request a second).
"""

from __future__ import annotations

import html
import json

from bokeh.embed import components
from bokeh.layouts import column
from bokeh.models import (
    ColumnDataSource,
    DataTable,
    Div,
    HoverTool,
    TableColumn,
)
from bokeh.plotting import figure

from .discovery import ClusterInfo

__all__ = ["PAGES", "cluster_list", "render"]

PAGES = {
    "graph": "Task graph",
    "timeline": "Timeline",
    "actors": "Actors",
    "objects": "Object store",
    "nodes": "Nodes",
}

STATE_COLORS = {
    "PENDING_ARGS_AVAIL": "#bbbbbb",
    "PENDING_NODE_ASSIGNMENT": "#f0c040",
    "SUBMITTED_TO_WORKER": "#f09040",
    "RUNNING": "#3080e0",
    "FINISHED": "#30a050",
    "FAILED": "#e03030",
}

_BOKEH_JS = ("bokeh", "bokeh-widgets", "bokeh-tables")

_STYLE = """
body { font-family: sans-serif; margin: 1em; }
nav a { margin-right: 1em; }
table.cf { border-collapse: collapse; } table.cf td, table.cf th { padding: 2px 8px; }
"""


def _page(title: str, base: str, body: str, script: str = "", config: dict | None = None) -> str:
    scripts = "\n".join(
        f'<script src="{base}cellfleet/static/bokeh/{name}.min.js"></script>' for name in _BOKEH_JS
    )
    cfg = f"<script>window.CELLFLEET = {json.dumps(config or {})};</script>"
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)} · cellfleet</title>
<style>{_STYLE}</style>
{scripts}
{cfg}
</head><body>
{body}
{script}
</body></html>"""


def _nav(base: str, cluster: ClusterInfo, current: str) -> str:
    links = [f'<a href="{base}cellfleet/dashboard/{cluster.id}/">index</a>']
    for page, title in PAGES.items():
        mark = " <b>" if page == current else ""
        end = "</b>" if mark else ""
        links.append(f'{mark}<a href="{base}cellfleet/dashboard/{cluster.id}/{page}">'
                     f"{html.escape(title)}</a>{end}")
    return f"<nav>{''.join(links)}</nav>"


def cluster_list(base: str, clusters: list[ClusterInfo]) -> str:
    rows = "".join(
        f'<tr><td><a href="{base}cellfleet/dashboard/{c.id}/">{c.id}</a></td>'
        f"<td>{html.escape(c.address)}</td><td>{html.escape(c.source)}</td>"
        f"<td>{html.escape(c.kernel_id or '')}</td></tr>"
        for c in clusters
    )
    body = ("<h1>cellfleet clusters</h1><table class='cf'><tr><th>id</th><th>address</th>"
            f"<th>source</th><th>kernel</th></tr>{rows}</table>")
    if not clusters:
        body += "<p>No running cluster.</p>"
    return _page("clusters", base, body)


def _index(base: str, cluster: ClusterInfo) -> str:
    items = "".join(
        f'<li><a href="{base}cellfleet/dashboard/{cluster.id}/{page}">{html.escape(title)}</a></li>'
        for page, title in PAGES.items()
    )
    body = (f"<h1>cellfleet cluster {cluster.id}</h1><p>GCS at {html.escape(cluster.address)}"
            f"</p><ul>{items}</ul>")
    return _page(f"cluster {cluster.id}", base, body)


def _table(name: str, columns: list[str], height: int = 300) -> DataTable:
    source = ColumnDataSource({c: [] for c in columns}, name=name)
    return DataTable(source=source, columns=[TableColumn(field=c, title=c) for c in columns],
                     sizing_mode="stretch_width", height=height, name=f"{name}_table")


def _graph_layout():
    edges = ColumnDataSource({"x0": [], "y0": [], "x1": [], "y1": []}, name="edges")
    tasks = ColumnDataSource({k: [] for k in (
        "x", "y", "color", "name", "state", "node", "worker", "duration", "error", "id")},
        name="tasks")
    objects = ColumnDataSource({k: [] for k in ("x", "y", "id", "size", "color")},
                               name="objects")
    fig = figure(height=600, sizing_mode="stretch_width", title="tasks (circles) and objects",
                 tools="pan,wheel_zoom,box_zoom,reset,tap", output_backend="webgl")
    fig.segment("x0", "y0", "x1", "y1", source=edges, line_color="#999999", line_alpha=0.5)
    task_r = fig.scatter("x", "y", source=tasks, size=10, color="color", line_color="#333333")
    obj_r = fig.scatter("x", "y", source=objects, size=7, marker="square", color="color")
    fig.add_tools(HoverTool(renderers=[task_r], tooltips=[
        ("function", "@name"), ("state", "@state"), ("node", "@node"), ("worker", "@worker"),
        ("duration", "@duration"), ("error", "@error"), ("task", "@id")]))
    fig.add_tools(HoverTool(renderers=[obj_r], tooltips=[("object", "@id"), ("size", "@size")]))
    fig.xaxis.axis_label = "depth"
    summary = Div(text="", name="summary", sizing_mode="stretch_width")
    return column(summary, fig, sizing_mode="stretch_width")


def _timeline_layout():
    spans = ColumnDataSource({k: [] for k in (
        "left", "right", "bottom", "top", "color", "name", "state", "worker")}, name="spans")
    fig = figure(height=500, sizing_mode="stretch_width", title="task stream per worker",
                 tools="xpan,xwheel_zoom,box_zoom,reset")
    r = fig.quad("left", "right", "bottom", "top", source=spans, color="color",
                 line_color="#333333", line_width=0.3)
    fig.add_tools(HoverTool(renderers=[r], tooltips=[
        ("function", "@name"), ("state", "@state"), ("worker", "@worker")]))
    fig.xaxis.axis_label = "seconds"
    legend = Div(text="", name="workers", sizing_mode="stretch_width")
    return column(legend, fig, sizing_mode="stretch_width")


def _objects_layout():
    usage = ColumnDataSource({"xs": [], "ys": [], "node": [], "color": []}, name="usage")
    fig = figure(height=300, sizing_mode="stretch_width", title="object store used (MiB)",
                 tools="pan,wheel_zoom,reset")
    fig.multi_line("xs", "ys", source=usage, line_color="color", line_width=2)
    fig.xaxis.axis_label = "seconds"
    stores = _table("stores", ["node_id", "used", "capacity", "count", "spilled",
                               "live_objects"], 150)
    largest = _table("largest", ["object_id", "size", "where", "node_id", "owner", "source"])
    return column(fig, Div(text="<h3>per node</h3>"), stores,
                  Div(text="<h3>largest objects</h3>"), largest, sizing_mode="stretch_width")


def _actors_layout():
    return column(_table("actors", ["class_name", "actor_id", "name", "state", "node_id", "pid",
                                    "num_restarts", "pending_calls", "death_cause"], 500),
                  sizing_mode="stretch_width")


def _nodes_layout():
    return column(_table("nodes", ["node_id", "raylet_address", "alive", "cpu", "memory",
                                   "object_store", "workers", "queued", "heartbeat_age"], 300),
                  sizing_mode="stretch_width")


_LAYOUTS = {
    "graph": _graph_layout,
    "timeline": _timeline_layout,
    "actors": _actors_layout,
    "objects": _objects_layout,
    "nodes": _nodes_layout,
}


def render(page: str, base: str, cluster: ClusterInfo) -> str:
    if page == "index":
        return _index(base, cluster)
    script, div = components(_LAYOUTS[page]())
    title = PAGES[page]
    body = (f"{_nav(base, cluster, page)}<h2>{html.escape(title)}</h2>"
            f'<div id="status" style="color:#888">connecting…</div>{div}')
    config = {"api": f"{base}cellfleet/api/clusters/{cluster.id}/", "page": page,
              "colors": STATE_COLORS, "interval": 1000}
    return _page(title, base, body, script + f"<script>{_LIVE_JS}</script>", config)


# The client side: poll the API, replace the named sources' data.
_LIVE_JS = r"""
(function () {
  const C = window.CELLFLEET;
  const token = new URLSearchParams(window.location.search).get("token");
  function url(path, params) {
    const u = new URL(C.api + path, window.location.href);
    for (const [k, v] of Object.entries(params || {})) u.searchParams.set(k, v);
    if (token) u.searchParams.set("token", token);
    return u.toString();
  }
  function doc() { return (window.Bokeh && Bokeh.documents.length) ? Bokeh.documents[0] : null; }
  function model(name) { const d = doc(); return d ? d.get_model_by_name(name) : null; }
  function set(name, data) { const m = model(name); if (m) m.data = data; }
  function esc(s) { return String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;",
                                                                ">": "&gt;", '"': "&quot;"}[c])); }
  function status(text) {
    const el = document.getElementById("status"); if (el) el.textContent = text;
  }
  function fmt(x) { return x == null ? "" : (typeof x === "number" ? x.toFixed(4) : String(x)); }
  const palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];

  // --- task graph: accumulate changes from the cursor, lay out by dependency depth
  const G = {since: 0, tasks: new Map(), args: new Map(), returns: new Map(), objects: new Map(),
             max: 2000};
  function graph(d) {
    G.since = d.cursor;
    for (const t of d.tasks) { G.tasks.delete(t.id); G.tasks.set(t.id, t); }
    for (const o of d.objects) G.objects.set(o.id, o);
    for (const e of d.edges) {
      const m = e.kind === "arg" ? G.args : G.returns;
      const key = e.kind === "arg" ? e.target : e.source;
      const val = e.kind === "arg" ? e.source : e.target;
      if (!m.has(key)) m.set(key, new Set());
      m.get(key).add(val);
    }
    while (G.tasks.size > G.max) {
      const first = G.tasks.keys().next().value;
      G.tasks.delete(first); G.args.delete(first); G.returns.delete(first);
    }
    const producer = new Map();
    for (const [tid, outs] of G.returns) for (const o of outs) producer.set(o, tid);
    const depth = new Map(), rows = new Map(), pos = new Map();
    function depthOf(tid, guard) {
      if (depth.has(tid)) return depth.get(tid);
      let dd = 0;
      if (guard < 200) for (const o of (G.args.get(tid) || [])) {
        const p = producer.get(o);
        if (p && G.tasks.has(p)) dd = Math.max(dd, depthOf(p, guard + 1) + 1);
      }
      depth.set(tid, dd); return dd;
    }
    const T = {x: [], y: [], color: [], name: [], state: [], node: [], worker: [], duration: [],
               error: [], id: []};
    for (const [tid, t] of G.tasks) {
      const x = depthOf(tid, 0) * 2, y = rows.get(x) || 0;
      rows.set(x, y + 1); pos.set(tid, [x, y]);
      T.x.push(x); T.y.push(-y); T.color.push(C.colors[t.state] || "#888");
      T.name.push(t.name); T.state.push(t.state); T.node.push((t.node_id || "").slice(0, 12));
      T.worker.push(t.worker_pid ? String(t.worker_pid) : "");
      T.duration.push(t.duration == null ? "" : t.duration.toFixed(4) + " s");
      T.error.push(t.error_message || ""); T.id.push(tid);
    }
    const O = {x: [], y: [], id: [], size: [], color: []};
    const E = {x0: [], y0: [], x1: [], y1: []};
    const opos = new Map();
    for (const [tid, outs] of G.returns) {
      const p = pos.get(tid); if (!p) continue;
      let i = 0;
      for (const o of outs) { opos.set(o, [p[0] + 1, -p[1] - 0.3 * i]); i++;
        E.x0.push(p[0]); E.y0.push(-p[1]); E.x1.push(p[0] + 1); E.y1.push(-p[1] - 0.3 * (i - 1)); }
    }
    for (const [tid, ins] of G.args) {
      const p = pos.get(tid); if (!p) continue;
      for (const o of ins) {
        if (!opos.has(o)) opos.set(o, [p[0] - 1, -p[1]]);
        const q = opos.get(o); E.x0.push(q[0]); E.y0.push(q[1]); E.x1.push(p[0]); E.y1.push(-p[1]);
      }
    }
    for (const [oid, q] of opos) {
      const o = G.objects.get(oid) || {};
      O.x.push(q[0]); O.y.push(q[1]); O.id.push(oid); O.size.push(o.size == null ? "" : o.size);
      O.color.push(o.live ? "#7050c0" : "#d0d0d0");
    }
    set("tasks", T); set("objects", O); set("edges", E);
    const counts = Object.entries(d.counts).map(([name, c]) => "<tr><td>" + esc(name) +
      "</td><td>" + Object.entries(c).map(([s, n]) => esc(s) + ": " + n).join(", ") +
      "</td></tr>").join("");
    const s = model("summary");
    if (s) s.text = "<b>" + d.total_tasks + " tasks</b>" + (G.tasks.size < d.total_tasks ?
      " (drawing the newest " + G.tasks.size + ")" : "") +
      "<table class='cf'>" + counts + "</table>";
  }

  // --- timeline
  let t0 = null;
  function timeline(d) {
    const S = {left: [], right: [], bottom: [], top: [], color: [], name: [], state: [],
               worker: []};
    const keys = Object.keys(d.workers).sort();
    const now = Date.now() / 1000;
    for (const spans of Object.values(d.workers)) for (const s of spans)
      if (t0 === null || s.start < t0) t0 = s.start;
    keys.forEach((k, i) => {
      for (const s of d.workers[k]) {
        S.left.push(s.start - t0); S.right.push((s.end || now) - t0);
        S.bottom.push(i + 0.1); S.top.push(i + 0.9);
        S.color.push(C.colors[s.state] || palette[i % palette.length]);
        S.name.push(s.name); S.state.push(s.state); S.worker.push(k);
      }
    });
    set("spans", S);
    const w = model("workers");
    if (w) w.text = keys.map((k, i) => i + ": worker " + esc(k)).join(" · ");
  }

  function table(name, rows, cols) {
    const data = {};
    for (const c of cols) data[c] = rows.map(r => r[c] == null ? "" : r[c]);
    set(name, data);
  }

  // --- object store
  const usage = new Map();
  let u0 = null;
  function objects(d) {
    const now = Date.now() / 1000; if (u0 === null) u0 = now;
    for (const n of d.nodes) {
      if (!usage.has(n.node_id)) usage.set(n.node_id, {xs: [], ys: []});
      const u = usage.get(n.node_id); u.xs.push(now - u0); u.ys.push(n.used / 1048576);
      if (u.xs.length > 600) { u.xs.shift(); u.ys.shift(); }
    }
    const U = {xs: [], ys: [], node: [], color: []};
    let i = 0;
    for (const [nid, u] of usage) { U.xs.push(u.xs.slice()); U.ys.push(u.ys.slice());
      U.node.push(nid); U.color.push(palette[i++ % palette.length]); }
    set("usage", U);
    table("stores", d.nodes, ["node_id", "used", "capacity", "count", "spilled", "live_objects"]);
    table("largest", d.largest, ["object_id", "size", "where", "node_id", "owner", "source"]);
  }

  function nodes(d) {
    const now = Date.now() / 1000;
    const rows = d.nodes.map(n => ({
      node_id: n.node_id, raylet_address: n.raylet_address, alive: String(n.alive),
      cpu: fmt((n.resources_used || {}).CPU) + " / " + fmt((n.resources || {}).CPU),
      memory: Math.round(((n.resources || {}).memory || 0) / 1048576) + " MiB",
      object_store: Math.round(((n.store || {}).used || 0) / 1048576) + " / " +
        Math.round(((n.store || {}).capacity || 0) / 1048576) + " MiB",
      workers: ((n.load || {}).leased || 0) + " leased, " +
        ((n.load || {}).idle_workers || 0) + " idle",
      queued: (n.load || {}).queued || 0,
      heartbeat_age: n.alive ? (now - n.last_heartbeat).toFixed(1) + " s"
                             : (n.death_reason || "dead"),
    }));
    table("nodes", rows, ["node_id", "raylet_address", "alive", "cpu", "memory", "object_store",
                          "workers", "queued", "heartbeat_age"]);
  }

  function actors(d) {
    table("actors", d.actors, ["class_name", "actor_id", "name", "state", "node_id", "pid",
                               "num_restarts", "pending_calls", "death_cause"]);
  }

  const PAGES = {
    graph: [() => url("graph", {since: G.since}), graph],
    timeline: [() => url("timeline", {since: Date.now() / 1000 - 600}), timeline],
    objects: [() => url("objects"), objects],
    nodes: [() => url("nodes"), nodes],
    actors: [() => url("actors"), actors],
  };
  const [target, apply] = PAGES[C.page];
  async function tick() {
    if (!doc()) { setTimeout(tick, 100); return; }
    try {
      const r = await fetch(target(), {credentials: "same-origin"});
      if (!r.ok) throw new Error("HTTP " + r.status);
      apply(await r.json());
      status("live · updated " + new Date().toLocaleTimeString());
      window.CELLFLEET_UPDATES = (window.CELLFLEET_UPDATES || 0) + 1;
    } catch (err) {
      status("cannot update: " + err.message);
    }
    setTimeout(tick, C.interval);
  }
  tick();
})();
"""
