// cellfleet's task graph: one ES module for the notebook widget (anywidget) and the dashboard.
// The kernel (or the dashboard's API) sends a bounded `view` (see cellfleet.widgets.model);
// this draws it as a layered left-to-right DAG laid out by dagre (prepended to this file),
// with a legend, pan/zoom/fit, group nodes that expand on click, a details panel with the
// task's lineage highlighted, and a time slider that replays the states.

const COLORS = {
  PENDING_ARGS_AVAIL: "#8c8c8c",
  PENDING_NODE_ASSIGNMENT: "#e0a800",
  SUBMITTED_TO_WORKER: "#f0700a",
  RUNNING: "#1c7ed6",
  FINISHED: "#2f9e44",
  FAILED: "#e03131",
};
const SHORT = {
  PENDING_ARGS_AVAIL: "waiting for args",
  PENDING_NODE_ASSIGNMENT: "queued",
  SUBMITTED_TO_WORKER: "submitted",
  RUNNING: "running",
  FINISHED: "done",
  FAILED: "failed",
};
const ORDER = Object.keys(COLORS);
// a replayed group's label: what ran and ended first (the label is cut to the node's width)
const REPLAY_ORDER = ["RUNNING", "FINISHED", "FAILED", "SUBMITTED_TO_WORKER",
                      "PENDING_NODE_ASSIGNMENT", "PENDING_ARGS_AVAIL"];
const SVGNS = "http://www.w3.org/2000/svg";
const TASK_W = 150, TASK_H = 30, GROUP_W = 250, GROUP_H = 46;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v != null) el.setAttribute(k, v);
  }
  for (const c of children) if (c != null) el.append(c);
  return el;
}

function s(tag, attrs) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v != null) el.setAttribute(k, v);
  return el;
}

function stateAt(ev, t) {
  let best = null;
  for (const [state, ts] of Object.entries(ev || {})) {
    if (ts <= t && (best === null || ORDER.indexOf(state) >= ORDER.indexOf(best))) best = state;
  }
  return best;
}

function seconds(x) {
  if (x == null) return "";
  if (x < 1e-3) return (x * 1e6).toFixed(0) + " µs";
  if (x < 1) return (x * 1e3).toFixed(1) + " ms";
  if (x < 120) return x.toFixed(2) + " s";
  return (x / 60).toFixed(1) + " min";
}

function bytes(n) {
  if (n == null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return (i ? n.toFixed(n < 10 ? 1 : 0) : String(n)) + " " + units[i];
}

function fit(text, width) {
  const max = Math.max(4, Math.floor(width / 7));
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

/** A group's bar: one segment per state, as wide as its share of `count`. */
function drawParts(parts, box, states, count) {
  parts.replaceChildren();
  let x = 0;
  for (const st of ORDER) {
    const c = (states || {})[st];
    if (!c) continue;
    const w = (box.width - 2) * c / Math.max(1, count);
    parts.append(s("rect", { class: "cf-part", x: 1 + x, y: box.height - 7, width: w, height: 6,
                             fill: COLORS[st] }));
    x += w;
  }
}

/** Draws `view` into `el`; `send(msg)` talks to the kernel, `expand(keys)` opens groups. */
export function createGraph(el, { send, expand, live, memory, cancel }) {
  const mem = memory || {};  // what the user did, kept when the output is drawn again
  el.classList.add("cf-graph");
  const title = h("span", { class: "cf-title" });
  const legend = h("span", { class: "cf-legend" });
  const fitBtn = h("button", { class: "cf-btn", title: "fit the graph to the panel" }, "Fit");
  const slider = h("input", { type: "range", min: "0", max: "1000", value: "1000",
                              class: "cf-slider", title: "replay: drag to an earlier moment" });
  const clock = h("span", { class: "cf-clock" }, "live");
  const opened = h("span", { class: "cf-opened" });
  const bar = h("div", { class: "cf-bar" }, title, legend, opened,
                h("span", { class: "cf-grow" }), slider, clock, fitBtn);
  const svg = s("svg", { class: "cf-svg" });
  const defs = s("defs");
  for (const [id, color] of [["cf-arrow", null], ["cf-arrow-hi", "#f59f00"]]) {
    const marker = s("marker", { id, viewBox: "0 0 10 10", refX: "9", refY: "5",
                                 markerWidth: "7", markerHeight: "7", orient: "auto" });
    const tip = s("path", { d: "M0,0 L10,5 L0,10 z", class: color ? "cf-tip-hi" : "cf-tip" });
    marker.append(tip);
    defs.append(marker);
  }
  svg.append(defs);
  const world = s("g");
  svg.append(world);
  const details = h("div", { class: "cf-details", hidden: "" });
  const empty = h("div", { class: "cf-empty" }, "No tasks yet: they appear here as they are submitted.");
  const stage = h("div", { class: "cf-stage" }, svg, empty, details);
  el.replaceChildren(bar, stage);

  let view = null;
  let selected = mem.selected || null;
  let transform = mem.transform || { x: 0, y: 0, k: 1 };
  let touched = mem.touched || false;  // the user panned or zoomed: updates keep their view
  if (mem.slider) slider.value = mem.slider;
  let layoutSize = { w: 1, h: 1 };
  const nodeEls = new Map();
  let edgeEls = [];

  function apply() {
    mem.transform = transform;
    mem.touched = touched;
    world.setAttribute("transform", `translate(${transform.x},${transform.y}) scale(${transform.k})`);
  }
  function fitView() {
    const W = svg.clientWidth || 600, H = svg.clientHeight || 400;
    const k = Math.min(1.5, (W - 20) / layoutSize.w, (H - 20) / layoutSize.h);
    transform = { k, x: (W - layoutSize.w * k) / 2, y: (H - layoutSize.h * k) / 2 };
    apply();
  }
  fitBtn.addEventListener("click", () => { touched = false; fitView(); });
  svg.addEventListener("wheel", (e) => {
    e.preventDefault();
    touched = true;
    const r = svg.getBoundingClientRect();
    const px = e.clientX - r.left, py = e.clientY - r.top;
    const f = Math.exp(-e.deltaY * 0.0015);
    const k = Math.max(0.05, Math.min(8, transform.k * f));
    transform = { k, x: px - (px - transform.x) * (k / transform.k),
                  y: py - (py - transform.y) * (k / transform.k) };
    apply();
  }, { passive: false });
  let drag = null;
  svg.addEventListener("pointerdown", (e) => {
    drag = { x: e.clientX, y: e.clientY, tx: transform.x, ty: transform.y, moved: false };
  });
  window.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    if (drag.moved) {
      touched = true;
      transform.x = drag.tx + dx; transform.y = drag.ty + dy; apply();
    }
  });
  window.addEventListener("pointerup", () => { setTimeout(() => { drag = null; }, 0); });
  svg.addEventListener("click", (e) => {
    if (drag && drag.moved) return;
    if (e.target === svg) select(null);
  });

  slider.addEventListener("input", () => { mem.slider = slider.value; recolor(); });

  function replayTime() {
    if (!view || view.t0 == null || slider.value === "1000") return null;
    return view.t0 + (view.t1 - view.t0) * Number(slider.value) / 1000;
  }

  function recolor() {
    const t = replayTime();
    clock.textContent = t === null ? "live" : "+" + seconds(t - view.t0);
    for (const n of view ? view.nodes : []) {
      const g = nodeEls.get(n.id);
      if (!g) continue;
      let state = n.state;
      if (t !== null && n.kind === "task") state = stateAt(n.ev, t);
      if (n.kind !== "task" && g.cf) state = replayGroup(n, g, t);
      g.style.setProperty("--c", COLORS[state] || "#8c8c8c");
      g.classList.toggle("cf-future", state === null);
    }
  }

  // A collapsed group at time t: its members' states then (those of the newest members the
  // view carries, scaled to the group's size), drawn in its bar and label; live again at null.
  function replayGroup(n, g, t) {
    const { parts, text, box } = g.cf;
    if (t === null || !(n.replay && n.replay.length)) {
      drawParts(parts, box, n.states, n.count);
      text.textContent = fit("▸ " + n.label, box.width - 12);
      g.dataset.replay = "";
      return n.state;
    }
    const at = (t - view.t0) * 1000;
    const raw = {};
    let later = 0;
    for (const times of n.replay) {
      let reached = -1;
      times.forEach((ts, i) => { if (ts !== null && ts <= at) reached = i; });
      if (reached < 0) later += 1;
      else raw[ORDER[reached]] = (raw[ORDER[reached]] || 0) + 1;
    }
    const scale = n.count / n.replay.length;
    const states = {};
    for (const [st, c] of Object.entries(raw)) states[st] = Math.round(c * scale);
    drawParts(parts, box, states, n.count);
    const shown = REPLAY_ORDER.filter((st) => states[st]).map((st) => `${states[st]} ${SHORT[st]}`);
    if (later) shown.push(`${Math.round(later * scale)} not yet`);
    text.textContent = fit(`▸ ${n.kind === "more" ? n.count + " more " + n.key
                                                   : n.key + " × " + n.count} · ${shown.join(" · ")}`,
                           box.width - 12);
    g.dataset.replay = shown.join(" · ");
    if (later === n.replay.length) return null;
    if (states.FAILED) return "FAILED";
    if (states.RUNNING) return "RUNNING";
    return ORDER.filter((st) => states[st]).sort((a, b) => states[b] - states[a])[0];
  }

  function lineage(id) {
    const up = new Map();
    for (const e of view.edges) {
      if (e.kind !== "data") continue;
      if (!up.has(e.t)) up.set(e.t, []);
      up.get(e.t).push(e.s);
    }
    const seen = new Set([id]);
    const stack = [id];
    while (stack.length) for (const p of up.get(stack.pop()) || []) {
      if (!seen.has(p)) { seen.add(p); stack.push(p); }
    }
    return seen;
  }

  function select(id) {
    selected = id;
    mem.selected = id;
    const node = view && view.nodes.find((n) => n.id === id);
    if (!node) {
      selected = null;
      mem.selected = null;
      details.hidden = true;
      for (const g of nodeEls.values()) g.classList.remove("cf-dim", "cf-sel", "cf-up");
      for (const [p] of edgeEls) p.classList.remove("cf-dim", "cf-hi");
      return;
    }
    const up = lineage(id);
    for (const [nid, g] of nodeEls) {
      g.classList.toggle("cf-dim", !up.has(nid));
      g.classList.toggle("cf-up", up.has(nid) && nid !== id);
      g.classList.toggle("cf-sel", nid === id);
    }
    for (const [p, e] of edgeEls) {
      const on = e.kind === "data" && up.has(e.s) && up.has(e.t);
      p.classList.toggle("cf-hi", on);
      p.classList.toggle("cf-dim", !on);
    }
    showDetails(node);
  }

  function row(label, value) {
    return value == null || value === "" ? null : h("tr", {}, h("th", {}, label), h("td", {}, value));
  }

  function showDetails(n) {
    details.hidden = false;
    const close = h("button", { class: "cf-btn cf-close", title: "close",
                                onclick: () => select(null) }, "×");
    if (n.kind !== "task") {
      const counts = Object.entries(n.states || {}).map(([st, c]) =>
        h("div", {}, h("span", { class: "cf-chip", style: `--c:${COLORS[st]}` }), ` ${c} ${SHORT[st]}`));
      details.replaceChildren(close, h("h3", {}, n.key), h("p", {}, `${n.count} tasks`), ...counts,
        h("p", { class: "cf-hint" }, live() ? "Click the group to show its tasks."
                                            : "Run the notebook to open groups."));
      return;
    }
    const producer = new Map();
    for (const m of view.nodes) for (const r of m.returns || []) producer.set(r, m);
    const sizeOf = (list, i) => (list && list[i] != null
      ? h("span", { class: "cf-size" }, " · " + bytes(list[i])) : null);
    const args = (n.args || []).map((oid, i) => {
      const p = producer.get(oid);
      // an object id is its task's id and the return's index: show the tail of both
      const ref = h("code", { title: oid }, `…${oid.slice(-14, -8)}:${parseInt(oid.slice(-8), 16)}`);
      return h("li", {}, p
        ? h("a", { href: "#", onclick: (e) => { e.preventDefault(); select(p.id); } }, p.label)
        : "put or outside the view", " ", ref, sizeOf(n.arg_sizes, i));
    });
    const returns = (n.return_sizes || []).length
      ? n.return_sizes.map((size) => bytes(size)).join(", ") : null;
    const t0 = view.t0 || 0;
    const history = Object.entries(n.ev || {}).sort((a, b) => a[1] - b[1]).map(([st, ts]) =>
      h("tr", {}, h("td", {}, h("span", { class: "cf-chip", style: `--c:${COLORS[st]}` }), " " + SHORT[st]),
        h("td", { class: "cf-num" }, "+" + seconds(ts - t0))));
    const stop = (cancel !== false && n.state !== "FINISHED" && n.state !== "FAILED" && live())
      ? h("button", { class: "cf-btn cf-cancel", onclick: () => send({ type: "cancel", task: n.id }) },
          "Cancel task") : null;
    details.replaceChildren(...[
      close,
      h("h3", {}, n.fn),
      h("div", { class: "cf-state", style: `--c:${COLORS[n.state]}` },
        n.cancelled ? "cancelled" : (SHORT[n.state] || n.state)),
      h("table", { class: "cf-kv" },
        row("task", h("code", {}, n.id)),
        row("cell", n.cell),
        row("node", n.node ? h("code", { title: n.node }, n.node.slice(0, 12)) : null),
        row("worker pid", n.pid),
        row("duration", seconds(n.duration)),
        row("attempt", n.attempt ? `${n.attempt + 1} (after ${n.attempt} ` +
          `retr${n.attempt === 1 ? "y" : "ies"})` : null),
        row("placement", n.reason),
        row("returns", returns),
        row("actor", n.actor ? h("code", {}, n.actor.slice(0, 12)) : null)),
      args.length ? h("h4", {}, "arguments (refs)") : null,
      args.length ? h("ul", { class: "cf-args" }, ...args) : null,
      h("h4", {}, "state history"),
      h("table", { class: "cf-kv" }, ...history),
      n.error ? h("h4", {}, "error") : null,
      n.error ? h("pre", { class: "cf-error" }, n.error) : null,
      stop].filter((c) => c != null));
  }

  function draw(next) {
    view = next;
    const total = view.total || 0;
    empty.hidden = total > 0;
    title.textContent = `${total} task${total === 1 ? "" : "s"}` +
      (view.scope && view.scope !== "all" ? ` · this ${view.scope}` : "");
    legend.replaceChildren(...ORDER.filter((st) => view.legend && view.legend[st]).map((st) =>
      h("span", { class: "cf-key", "data-state": st },
        h("span", { class: "cf-chip", style: `--c:${COLORS[st]}` }), ` ${SHORT[st]} ${view.legend[st]}`)));
    opened.replaceChildren(...(view.expanded || []).map((key) =>
      h("button", { class: "cf-btn cf-open", title: "collapse this group again",
                    onclick: () => expand((view.expanded || []).filter((k) => k !== key)) },
        `${key} ▾`)));

    const g = new dagre.graphlib.Graph({ compound: true, multigraph: false });
    g.setGraph({ rankdir: "LR", nodesep: 10, ranksep: 46, edgesep: 6, marginx: 12, marginy: 12 });
    g.setDefaultEdgeLabel(() => ({}));
    for (const a of view.actors || []) g.setNode("actor:" + a.id, { label: a.label, actor: true });
    for (const n of view.nodes) {
      const big = n.kind !== "task";
      g.setNode(n.id, { width: big ? GROUP_W : TASK_W, height: big ? GROUP_H : TASK_H });
      if (n.actor && n.kind === "task") g.setParent(n.id, "actor:" + n.actor);
    }
    for (const e of view.edges) if (g.hasNode(e.s) && g.hasNode(e.t)) g.setEdge(e.s, e.t);
    dagre.layout(g);
    const gg = g.graph();
    layoutSize = { w: Math.max(gg.width || 1, 1), h: Math.max(gg.height || 1, 1) };

    world.replaceChildren();
    nodeEls.clear();
    edgeEls = [];
    for (const a of view.actors || []) {
      const box = g.node("actor:" + a.id);
      if (!box || !box.width) continue;
      const grp = s("g", { class: "cf-actor" });
      grp.append(s("rect", { x: box.x - box.width / 2, y: box.y - box.height / 2 - 14,
                             width: box.width, height: box.height + 14, rx: 8 }));
      const label = s("text", { x: box.x - box.width / 2 + 8, y: box.y - box.height / 2 - 2 });
      label.textContent = "actor " + a.label;
      grp.append(label);
      world.append(grp);
    }
    const edgeLayer = s("g");
    world.append(edgeLayer);
    for (const e of view.edges) {
      const le = g.edge(e.s, e.t);
      if (!le || !le.points) continue;
      const d = "M" + le.points.map((p) => `${p.x},${p.y}`).join(" L");
      const p = s("path", { d, class: "cf-edge cf-" + e.kind, "marker-end": "url(#cf-arrow)",
                            "stroke-width": String(1.2 + Math.min(4, Math.log10(e.n || 1) * 1.5)) });
      const tip = s("title");
      tip.textContent = e.kind === "data"
        ? `object ${e.obj ? e.obj.slice(0, 10) : ""}${e.n > 1 ? ` and ${e.n - 1} more` : ""}` +
          (e.bytes != null ? ` · ${bytes(e.bytes)}` : "")
        : `submitted ${e.n} task${e.n > 1 ? "s" : ""}`;
      p.append(tip);
      edgeLayer.append(p);
      edgeEls.push([p, e]);
    }
    for (const n of view.nodes) {
      const box = g.node(n.id);
      const fault = n.type === "FAULT";  // a %chaos fault: drawn as the moment it struck
      const grp = s("g", { class: `cf-node cf-${n.kind}${fault ? " cf-fault" : ""}`,
                           "data-id": n.id, "data-state": n.state,
                           "data-cancelled": n.cancelled ? "1" : null,
                           transform: `translate(${box.x - box.width / 2},${box.y - box.height / 2})` });
      grp.style.setProperty("--c", COLORS[n.state] || "#8c8c8c");
      grp.append(s("rect", { width: box.width, height: box.height, rx: n.kind === "task" ? 5 : 8 }));
      const parts = s("g", { class: "cf-parts" });
      grp.append(parts);
      if (n.kind !== "task") drawParts(parts, box, n.states, n.count);
      const text = s("text", { x: 8, y: n.kind === "task" ? 19 : 22 });
      text.textContent = fit((n.kind === "task" ? (fault ? "⚡ " : "") : "▸ ") + n.label,
                             box.width - 12);
      grp.append(text);
      grp.cf = { parts, text, box };
      const tip = s("title");
      tip.textContent = n.kind === "task"
        ? `${n.fn} · ${n.cancelled ? "cancelled" : SHORT[n.state] || n.state}` +
          (n.duration != null ? " · " + seconds(n.duration) : "") +
          (n.node ? ` · node ${n.node.slice(0, 8)}` : "") +
          (n.attempt ? ` · attempt ${n.attempt + 1}` : "")
        : `${n.label}\nclick to show these tasks`;
      grp.append(tip);
      grp.addEventListener("click", (ev) => {
        ev.stopPropagation();
        if (drag && drag.moved) return;
        if (n.kind !== "task" && live()) {
          expand([...(view.expanded || []), n.key]);
        }
        select(n.id);
      });
      world.append(grp);
      nodeEls.set(n.id, grp);
    }
    if (!touched) fitView();
    recolor();
    if (selected) select(selected);
  }

  function refit() { if (!touched && view) fitView(); }

  /** A standalone SVG element picturing the graph (fixed light colours, no script), for the
   * notebook to keep: it is what a saved notebook shows where no widget can be drawn. */
  function picture() {
    if (!view || !view.nodes.length) return "";
    const pad = 8, top = 26;
    const w = layoutSize.w, hgt = layoutSize.h;
    const scale = Math.min(1, 1100 / w);
    const out = s("svg", { xmlns: SVGNS, width: Math.round(w * scale + 2 * pad),
                           height: Math.round((hgt + top) * scale + 2 * pad),
                           viewBox: `${-pad} ${-pad - top} ${w + 2 * pad} ${hgt + top + 2 * pad}` });
    const style = s("style");
    style.textContent = "text{font:12px sans-serif;fill:#222}.cf-group text{font-weight:600}" +
      ".cf-edge{fill:none;stroke:#999}.cf-child{stroke-dasharray:4 3}.cf-tip{fill:#999}" +
      ".cf-actor rect{fill:#f3f7fc;stroke:#1976d2;stroke-dasharray:6 3}" +
      ".cf-actor text{fill:#1976d2;font-size:11px;font-weight:600}";
    out.append(style, s("rect", { x: -pad, y: -pad - top, width: w + 2 * pad,
                                  height: hgt + top + 2 * pad, fill: "#fff" }));
    const head = s("text", { x: 0, y: -top + 12 });
    head.textContent = title.textContent + "   " + ORDER.filter((st) => view.legend[st])
      .map((st) => `${SHORT[st]} ${view.legend[st]}`).join(" · ");
    out.append(defs.cloneNode(true), head);
    const copy = world.cloneNode(true);
    copy.removeAttribute("transform");
    for (const g of copy.querySelectorAll(".cf-node")) {
      const c = g.style.getPropertyValue("--c") || "#8c8c8c";
      const rect = g.querySelector("rect");
      rect.setAttribute("fill", c); rect.setAttribute("fill-opacity", "0.2");
      rect.setAttribute("stroke", c); rect.setAttribute("stroke-width", "2");
      g.removeAttribute("style");
      g.classList.remove("cf-dim", "cf-up", "cf-sel");
    }
    for (const p of copy.querySelectorAll(".cf-edge")) p.classList.remove("cf-dim", "cf-hi");
    out.append(copy);
    return out;
  }

  /** The picture as a PNG (base64): an image every notebook viewer shows, trusted or not. */
  async function png() {
    const svgEl = picture();
    if (!svgEl) return "";
    const w = Number(svgEl.getAttribute("width")), hgt = Number(svgEl.getAttribute("height"));
    const img = new Image();
    img.src = "data:image/svg+xml;charset=utf-8," +
      encodeURIComponent(new XMLSerializer().serializeToString(svgEl));
    await img.decode();
    const ratio = 1.5;
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(w * ratio); canvas.height = Math.round(hgt * ratio);
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.drawImage(img, 0, 0, w, hgt);
    return canvas.toDataURL("image/png").slice("data:image/png;base64,".length);
  }

  return { draw, select, refit, png, get view() { return view; } };
}

const MEMORY = new WeakMap();  // model -> what its views' user did

function render({ model, el }) {
  if (!MEMORY.has(model)) MEMORY.set(model, {});
  let alive = false;  // a kernel answered our hello: groups can open, tasks be cancelled
  el.style.setProperty("--cf-height", (model.get("height") || 460) + "px");
  const graph = createGraph(el, {
    send: (msg) => model.send(msg),
    expand: (keys) => { model.set("expanded", keys); model.save_changes(); },
    live: () => alive,
    memory: MEMORY.get(model),
  });
  let pending = null;
  const keep = () => {  // the picture the notebook saves, once the graph is still for 2 s
    if (!alive) return;
    clearTimeout(pending);
    pending = setTimeout(async () => {
      const svg = await graph.png();
      if (svg && svg !== model.get("picture")) {
        model.set("picture", svg);  // the kernel puts it in the output, which is drawn again
        model.save_changes();
      } else {
        el.dataset.pictured = "1";
      }
    }, 2000);
  };
  const redraw = () => {
    const v = model.get("view");
    if (v && v.nodes) { graph.draw(v); keep(); }
  };
  model.on("change:view", redraw);
  model.on("msg:custom", (msg) => {
    if (msg && msg.type === "hello" && !alive) { alive = true; el.dataset.live = "1"; redraw(); }
  });
  redraw();
  try { model.send({ type: "hello" }); } catch (err) { /* no kernel: a saved, static graph */ }
  const observer = new ResizeObserver(() => graph.refit());
  observer.observe(el.querySelector(".cf-svg"));
  return () => { alive = false; clearTimeout(pending); observer.disconnect(); };
}

export default { render };
