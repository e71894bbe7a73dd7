"""The dashboard pages: one style in JupyterLab's colours (light or dark), kept live by polling.

Every page shares ``_STYLE`` (the theme's colours as CSS variables, ``?theme=dark`` for the
dark one; the lab extension passes the theme JupyterLab shows) and a small script that fetches
the cluster's API once a second and redraws. Tables are HTML (they fit their panel: long values
are cut with an ellipsis and shown whole on hover), sizes in human units. The timeline and the
object store's history are bokeh figures themed alike; the task graph is the notebook widget's
own component (``cellfleet/static/taskgraph.js``), fed by the ``view`` endpoint. No bokeh
server session or websocket per viewer.
"""

from __future__ import annotations

import html
import json
from functools import cache
from pathlib import Path

from bokeh.embed import components
from bokeh.layouts import column
from bokeh.models import (
    ColumnDataSource,
    CustomJSTickFormatter,
    FixedTicker,
    HoverTool,
    Range1d,
)
from bokeh.plotting import figure
from bokeh.themes import Theme

from cellfleet.widgets.model import COLORS, SHORT

from .discovery import ClusterInfo

__all__ = ["PAGES", "cluster_list", "render"]

PAGES = {
    "graph": "Task graph",
    "timeline": "Timeline",
    "actors": "Actors",
    "objects": "Objects",
    "nodes": "Nodes",
}
STATE_COLORS = COLORS

_BOKEH_JS = ("bokeh", "bokeh-widgets")

# JupyterLab's own colours (its light and dark themes' --jp-layout-color0/2, font colours,
# border colour, brand colour), so a page in a Lab panel looks like part of Lab.
_THEMES = {
    "light": {"bg": "#ffffff", "bg2": "#eeeeee", "fg": "rgba(0,0,0,0.87)",
              "fg2": "rgba(0,0,0,0.54)", "line": "#e0e0e0", "accent": "#1976d2",
              "grid": "#eeeeee"},
    "dark": {"bg": "#111111", "bg2": "#424242", "fg": "rgba(255,255,255,0.87)",
             "fg2": "rgba(255,255,255,0.54)", "line": "#616161", "accent": "#42a5f5",
             "grid": "#2a2a2a"},
}

_STYLE = """
:root { --bg: %(bg)s; --bg2: %(bg2)s; --fg: %(fg)s; --fg2: %(fg2)s; --line: %(line)s;
  --accent: %(accent)s;
  --jp-layout-color0: var(--bg); --jp-layout-color2: var(--bg2); --jp-ui-font-color1: var(--fg);
  --jp-ui-font-color2: var(--fg2); --jp-ui-font-color3: var(--fg2);
  --jp-border-color1: var(--line); --jp-border-color2: var(--line);
  --jp-brand-color1: var(--accent); color-scheme: %(scheme)s; }
* { box-sizing: border-box; }
body { background: var(--bg); color: var(--fg); margin: 0; padding: 0 16px 16px;
  font: 13px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { display: flex; align-items: baseline; gap: 18px; flex-wrap: wrap;
  border-bottom: 1px solid var(--line); padding: 8px 0 0; margin-bottom: 12px; }
header .name { font-weight: 600; font-size: 15px; }
header nav { display: flex; gap: 2px; flex-wrap: wrap; }
header nav a { color: var(--fg2); text-decoration: none; padding: 4px 10px;
  border-bottom: 2px solid transparent; }
header nav a:hover { color: var(--fg); }
header nav a.current { color: var(--fg); border-bottom-color: var(--accent); font-weight: 600; }
#status { color: var(--fg2); font-size: 12px; margin-left: auto; }
h2 { font-size: 14px; margin: 14px 0 6px; }
a { color: var(--accent); }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; min-width: 0; }
.card h2 { margin-top: 2px; }
.card.wide { margin-top: 14px; }
table.cf { width: 100%%; border-collapse: collapse; table-layout: fixed; }
table.cf th { text-align: left; color: var(--fg2); font-weight: 600;
  border-bottom: 1px solid var(--line); padding: 3px 8px 3px 0; }
table.cf td { padding: 3px 8px 3px 0; border-bottom: 1px solid var(--line);
  overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
table.cf td.num, table.cf th.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: 12px; }
.bar { display: flex; height: 10px; background: var(--bg2); border-radius: 2px;
  overflow: hidden; min-width: 60px; }
.bar > span { display: block; height: 100%%; }
.meter { display: flex; flex-direction: column; gap: 1px; }
.meter .txt { font-size: 11px; color: var(--fg2); overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; font-variant-numeric: tabular-nums; }
.lane { display: grid; grid-template-columns: 130px 1fr; align-items: center; gap: 6px;
  border-bottom: 1px solid var(--line); }
.lane code { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; color: var(--fg2); }
.lane svg { width: 100%%; background: var(--bg2); display: block; }
.keys { display: flex; flex-wrap: wrap; gap: 4px 14px; color: var(--fg2); margin: 4px 0; }
.chip { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
  vertical-align: -1px; margin-right: 4px; }
.muted { color: var(--fg2); }
.pill { display: inline-block; padding: 0 6px; border-radius: 3px; color: #fff;
  font-size: 12px; font-weight: 600; }
.empty { color: var(--fg2); padding: 8px 0; }
.notice { margin: -4px 0 10px; padding: 4px 10px; border-left: 3px solid var(--accent);
  background: var(--bg2); }
.notice.bad { border-left-color: #e03131; }
.limits { margin: 0 0 10px; padding: 4px 10px; border-left: 3px solid #e0a800;
  background: var(--bg2); color: var(--fg2); }
.limits ul { margin: 2px 0; padding-left: 18px; }
.btn { font: inherit; font-size: 12px; color: var(--fg); background: var(--bg2);
  border: 1px solid var(--line); border-radius: 3px; padding: 0 8px; cursor: pointer; }
.btn:hover { border-color: var(--accent); }
.refs { display: flex; flex-wrap: wrap; gap: 2px 4px; }
.ref { display: inline-block; padding: 0 5px; border-radius: 3px; font-size: 11px;
  background: var(--bg2); border: 1px solid var(--line); white-space: nowrap; }
#graph { height: calc(100vh - 90px); min-height: 420px; }
#graph .cf-graph { --cf-height: 100%%; height: 100%%; }
"""


def _theme(name: str) -> Theme:
    t = _THEMES[name]
    return Theme(json={"attrs": {
        "Plot": {"background_fill_color": t["bg"], "border_fill_color": t["bg"],
                 "outline_line_color": t["line"]},
        "Axis": {"major_label_text_color": t["fg2"], "axis_label_text_color": t["fg2"],
                 "axis_line_color": t["line"], "major_tick_line_color": t["line"],
                 "minor_tick_line_color": None},
        "Grid": {"grid_line_color": t["grid"]},
        "Title": {"text_color": t["fg"]},
    }})


def _page(title: str, base: str, body: str, *, theme: str, script: str = "",
          config: dict | None = None, bokeh: bool = False, head: str = "") -> str:
    scripts = "\n".join(
        f'<script src="{base}cellfleet/static/bokeh/{name}.min.js"></script>' for name in _BOKEH_JS
    ) if bokeh else ""
    cfg = f"<script>window.CELLFLEET = {json.dumps(config or {})};</script>"
    style = _STYLE % {**_THEMES[theme], "scheme": theme}
    return f"""<!DOCTYPE html>
<html class="cf-{theme}"><head><meta charset="utf-8"><title>{html.escape(title)} · cellfleet</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{style}</style>
{head}
{scripts}
{cfg}
</head><body>
{body}
{script}
</body></html>"""


def _name(cluster: ClusterInfo, notebook: str | None = None) -> str:
    """A cluster as people know it: by its notebook when a notebook's kernel started it."""
    return notebook.rsplit("/", 1)[-1] if notebook else f"cluster {cluster.id}"


def _header(base: str, cluster: ClusterInfo, current: str, theme: str,
            notebook: str | None = None) -> str:
    suffix = "?theme=dark" if theme == "dark" else ""
    links = [f'<a class="{"current" if current == "index" else ""}" '
             f'href="{base}cellfleet/dashboard/{cluster.id}/{suffix}">Overview</a>']
    for page, title in PAGES.items():
        links.append(f'<a class="{"current" if page == current else ""}" '
                     f'href="{base}cellfleet/dashboard/{cluster.id}/{page}{suffix}">'
                     f"{html.escape(title)}</a>")
    return (f'<header><span class="name" title="GCS at {html.escape(cluster.address)}">'
            f"cellfleet · {html.escape(_name(cluster, notebook))}</span><nav>{''.join(links)}</nav>"
            '<span id="status">connecting…</span></header>')


def cluster_list(base: str, clusters: list[ClusterInfo], theme: str = "light") -> str:
    rows = "".join(
        f'<tr><td><a href="{base}cellfleet/dashboard/{c.id}/">{c.id}</a></td>'
        f"<td><code>{html.escape(c.address)}</code></td><td>{html.escape(c.source)}</td>"
        f'<td title="{html.escape(c.kernel_id or "")}">{html.escape(c.kernel_id or "")}</td></tr>'
        for c in clusters
    )
    body = ("<header><span class='name'>cellfleet clusters</span></header>"
            "<table class='cf'><tr><th>cluster</th><th>GCS address</th><th>started by</th>"
            f"<th>kernel</th></tr>{rows}</table>")
    if not clusters:
        body += ("<p class='empty'>No running cluster: start one with <code>cellfleet start</code>"
                 " or a notebook on the cellfleet kernel.</p>")
    return _page("clusters", base, body, theme=theme)


def _timeline_layout():
    spans = ColumnDataSource({k: [] for k in (
        "left", "right", "bottom", "top", "color", "line", "name", "state", "worker",
        "duration", "error", "node", "attempt", "placement")}, name="spans")
    fig = figure(height=460, sizing_mode="stretch_width", tools="xpan,xwheel_zoom,box_zoom,reset",
                 name="timeline_fig", y_range=Range1d(0, 1, name="rows_range"))
    r = fig.quad("left", "right", "bottom", "top", source=spans, fill_color="color",
                 line_color="line", line_width=1.5)
    fig.add_tools(HoverTool(renderers=[r], tooltips=[
        ("function", "@name"), ("state", "@state"), ("node", "@node"), ("worker", "@worker"),
        ("attempt", "@attempt"), ("placed because", "@placement"), ("duration", "@duration"),
        ("error", "@error")]))
    fig.xaxis.axis_label = "seconds since the first task shown"
    fig.yaxis.ticker = FixedTicker(ticks=[], name="rows_ticker")
    fig.yaxis.axis_label = "node:pid"
    fig.yaxis.name = "rows_axis"
    fig.ygrid.grid_line_color = None
    return column(fig, sizing_mode="stretch_width")


def _objects_layout():
    usage = ColumnDataSource({"xs": [], "ys": [], "node": [], "color": []}, name="usage")
    fig = figure(height=260, sizing_mode="stretch_width", tools="xpan,xwheel_zoom,reset",
                 x_axis_type="datetime", name="usage_fig",
                 y_range=Range1d(0, 1, name="usage_range"))
    fig.multi_line("xs", "ys", source=usage, line_color="color", line_width=2)
    fig.yaxis.formatter = CustomJSTickFormatter(code="""
        const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0; let x = tick;
        while (Math.abs(x) >= 1024 && i < u.length - 1) { x /= 1024; i++; }
        return (i ? x.toFixed(x < 10 ? 1 : 0) : x.toFixed(0)) + " " + u[i];""")
    fig.yaxis.axis_label = "store used (the top is the capacity)"
    return column(fig, sizing_mode="stretch_width")


_LAYOUTS = {"timeline": _timeline_layout, "objects": _objects_layout}

_BODIES = {
    "index": """<div class="grid">
<div class="card"><h2>Tasks <span id="total" class="muted"></span></h2>
<div id="legend" class="keys"></div><div id="functions"></div></div>
<div class="card"><h2>Task stream <span class="muted">(last minute)</span></h2>
<div id="stream"></div></div>
<div class="card"><h2>Nodes</h2><div id="nodes"></div></div>
<div class="card"><h2>Actors</h2><div id="actors"></div></div></div>
<div class="card wide"><h2>Recent tasks</h2><div id="recent"></div></div>""",
    "graph": '<div id="graph"></div>',
    "timeline": '<div id="keys" class="keys"></div>{plot}',
    "actors": '<div id="actors"></div>',
    "objects": """{plot}<h2>Per node</h2><div id="stores"></div>
<h2>Largest objects</h2><div id="largest"></div>""",
    "nodes": '<div id="nodes"></div>',
}


def _limits(limits: list[str]) -> str:
    """What the cluster's engine does not expose, said plainly above the page's content."""
    if not limits:
        return ""
    items = "".join(f"<li>{html.escape(text)}</li>" for text in limits)
    return (f'<aside class="limits"><b>Not shown for this cluster</b> (its engine does not '
            f"expose it):<ul>{items}</ul></aside>")


def render(page: str, base: str, cluster: ClusterInfo, theme: str = "light",
           notebook: str | None = None, xsrf: str = "", limits: list[str] = ()) -> str:
    """A cluster's page (``index`` is the overview); ``notebook`` names the cluster; ``xsrf``
    is the token the page's POSTs (a cancel) send back in ``X-XSRFToken``; ``limits``: what
    the cluster's engine does not expose (e.g. a Ray cluster's argument edges)."""
    title = "Overview" if page == "index" else PAGES[page]
    body = _BODIES[page]
    script = ""
    head = ""
    if page in _LAYOUTS:
        script, div = components(_LAYOUTS[page](), theme=_theme(theme))
        body = body.format(plot=div)
    if page == "graph":
        head = f'<link rel="stylesheet" href="{base}cellfleet/static/taskgraph.css">'
    config = {"api": f"{base}cellfleet/api/clusters/{cluster.id}/", "page": page,
              "colors": STATE_COLORS, "short": SHORT, "interval": 1000,
              "module": f"{base}cellfleet/static/taskgraph.js", "theme": theme,
              "xsrf": xsrf}
    return _page(f"{title} · {_name(cluster, notebook)}", base,
                 _header(base, cluster, page, theme, notebook) + _limits(list(limits)) + body,
                 theme=theme,
                 script=script + f"<script type='module'>{_live_js()}</script>", config=config,
                 bokeh=page in _LAYOUTS, head=head)


@cache
def _live_js() -> str:
    """The client side (``static/dashboard.js``): poll the API, redraw."""
    return (Path(__file__).with_name("static") / "dashboard.js").read_text()
