// The dashboard pages' client side: poll the cluster's API once a second, redraw.
// Served inline by cellfleet.extension.pages; window.CELLFLEET holds the page's settings.
const C = window.CELLFLEET;
const token = new URLSearchParams(window.location.search).get("token");
function url(path, params) {
  const u = new URL(path.startsWith("/") ? path : C.api + path, window.location.href);
  for (const [k, v] of Object.entries(params || {})) u.searchParams.set(k, v);
  if (token) u.searchParams.set("token", token);
  return u.toString();
}
const $ = (id) => document.getElementById(id);
function esc(s) {
  return String(s == null ? "" : s).replace(/[&<>"]/g, (c) => (
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
}
function bytes(n) {
  if (n == null) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0; let x = n;
  while (x >= 1024 && i < u.length - 1) { x /= 1024; i++; }
  return (i ? x.toFixed(x < 10 ? 1 : 0) : String(x)) + " " + u[i];
}
function secs(x) {
  if (x == null) return "";
  return x < 1 ? (x * 1000).toFixed(x < 0.01 ? 2 : 0) + " ms" : x.toFixed(2) + " s";
}
// Task ids (and object ids: a task's id and an index) of one process share their start.
function oid(id) { return id ? `<code title="${esc(id)}">…${esc(id.slice(-14))}</code>` : ""; }
function short(id, n) { return id ? `<code title="${esc(id)}">${esc(id.slice(0, n || 12))}</code>` : ""; }
function bar(parts, total) {
  return '<span class="bar">' + parts.filter(([n]) => n > 0).map(([n, color, tip]) =>
    `<span style="width:${(100 * n / Math.max(total, 1)).toFixed(2)}%;background:${color}" ` +
    `title="${esc(tip)}"></span>`).join("") + "</span>";
}
function meter(used, total, text, color) {
  return `<div class="meter">${bar([[used, color || "var(--accent)", text]], total)}` +
    `<span class="txt">${esc(text)}</span></div>`;
}
function table(cols, rows, empty) {
  if (!rows.length) return `<div class="empty">${esc(empty || "nothing yet")}</div>`;
  const head = cols.map(([title, , cls, width]) =>
    `<th class="${cls || ""}" style="${width ? "width:" + width : ""}">${esc(title)}</th>`).join("");
  const body = rows.map((r) => "<tr>" + cols.map(([, cell, cls]) => {
    const v = cell(r);
    const tip = typeof v === "string" && !v.startsWith("<") ? ` title="${esc(v)}"` : "";
    return `<td class="${cls || ""}"${tip}>${typeof v === "string" && !v.startsWith("<") ? esc(v) : v}</td>`;
  }).join("") + "</tr>").join("");
  return `<table class="cf"><tr>${head}</tr>${body}</table>`;
}
function taskPill(t) {
  return t.cancelled ? '<span class="pill" style="background:#868e96">cancelled</span>' : pill(t.state);
}
function attempt(t) { return t.attempt ? `${t.attempt + 1} (retried)` : "1"; }
function pill(state) {
  const color = {ALIVE: "#2f9e44", PENDING: "#e0a800", RESTARTING: "#f0700a", DEAD: "#e03131"}[state]
    || C.colors[state] || "#8c8c8c";
  return `<span class="pill" style="background:${color}">${esc(C.short[state] || state)}</span>`;
}
const ORDER = Object.keys(C.colors);
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                 "#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94"];
const fnColor = new Map();
function colorOf(name) {
  if (!fnColor.has(name)) fnColor.set(name, PALETTE[fnColor.size % PALETTE.length]);
  return fnColor.get(name);
}
function doc() { return (window.Bokeh && Bokeh.documents.length) ? Bokeh.documents[0] : null; }
function model(name) { const d = doc(); return d ? d.get_model_by_name(name) : null; }

function stateBar(states, total) {
  return bar(ORDER.map((s) => [states[s] || 0, C.colors[s], `${states[s] || 0} ${C.short[s]}`]), total);
}
function legend(counts) {
  return ORDER.filter((s) => counts[s]).map((s) =>
    `<span><span class="chip" style="background:${C.colors[s]}"></span>${C.short[s]} ${counts[s]}</span>`).join("");
}
const FAULT = "#c92a2a";  // %chaos faults: the moment a worker, node, actor or GCS was hit
function spanColor(s) { return s.fault ? FAULT : colorOf(s.name); }
function faultKey(spans) {
  return spans.some((s) => s.fault) ?
    `<span><span class="chip" style="background:${FAULT};outline:2px solid #212529"></span>` +
    "fault (%chaos)</span>" : "";
}
function workerRows(spans) {
  const rows = [...new Set(spans.map((s) => s.worker))].sort();
  return new Map(rows.map((w, i) => [w, i]));
}
function streamSvg(spans) {
  if (!spans.length) return '<div class="empty">no task ran in the last minute</div>';
  const rows = workerRows(spans);
  const now = Date.now() / 1000, t0 = now - 60;
  const lanes = [...rows.keys()].map((w) => {
    const bars = spans.filter((s) => s.worker === w).map((s) => {
      const x0 = Math.max(s.start, t0), x1 = s.end || now;
      const x = 100 * (x0 - t0) / 60, width = Math.max(0.3, 100 * (x1 - x0) / 60);
      const edge = s.fault ? ' stroke="#212529" stroke-width="2"' :
        s.state === "FAILED" ? ' stroke="#e03131" stroke-width="2"' : "";
      const title = s.fault ? `${s.name}: ${s.placement || ""}` : s.name;
      return `<rect x="${x.toFixed(2)}%" y="1" width="${Math.max(width, s.fault ? 0.8 : 0)
        .toFixed(2)}%" height="14" fill="${spanColor(s)}"${edge}><title>${esc(title)}</title></rect>`;
    }).join("");
    return `<div class="lane"><code>${esc(w)}</code><svg height="16">${bars}</svg></div>`;
  }).join("");
  const keys = [...new Set(spans.filter((s) => !s.fault).map((s) => s.name))].map((n) =>
    `<span><span class="chip" style="background:${colorOf(n)}"></span>${esc(n)}</span>`);
  return lanes + `<div class="keys">${keys.join("")}${faultKey(spans)}</div>`;
}

function overview(d) {
  $("total").textContent = `· ${d.total_tasks}`;
  $("legend").innerHTML = legend(d.legend);
  $("functions").innerHTML = table([
    ["function", (f) => f.name, "", "35%"],
    ["progress", (f) => stateBar(f.states, f.total)],
    ["tasks", (f) => String(f.total), "num", "70px"],
  ], d.functions, "no task yet");
  $("stream").innerHTML = streamSvg(d.stream);
  $("nodes").innerHTML = table([
    ["node", (n) => short(n.node_id), "", "110px"],
    ["CPU", (n) => meter(n.cpu_used, n.cpu, `${n.cpu_used} / ${n.cpu} CPU`)],
    ["object store", (n) => meter(n.store_used, n.store_capacity,
      `${bytes(n.store_used)} / ${bytes(n.store_capacity)}`, "#7048e8")],
  ], d.nodes);
  $("recent").innerHTML = table([
    ["function", (t) => t.name, "", "22%"],
    ["state", (t) => taskPill(t), "", "100px"],
    ["node", (t) => short(t.node), "", "110px"],
    ["worker pid", (t) => String(t.pid || ""), "num", "90px"],
    ["attempt", (t) => attempt(t), "num", "100px"],
    ["placed because", (t) => t.placement || "", "", "16%"],
    ["duration", (t) => secs(t.duration), "num", "90px"],
    ["cell", (t) => t.cell || (t.tag ? short(t.tag, 8) : ""), "", "80px"],
    ["task", (t) => oid(t.task_id)],
    ["", (t) => ["FINISHED", "FAILED"].includes(t.state) ? "" :
      `<button class="btn" data-cancel="${esc(t.task_id)}" title="cancel this task">Cancel</button>`,
      "", "80px"],
  ], d.recent || [], "no task yet");
  const actors = Object.entries(d.actors);
  $("actors").innerHTML = actors.length ? `<div class="keys">${actors.map(([s, n]) =>
    `${pill(s)} ${n}`).join(" ")}</div>` : '<div class="empty">no actor</div>';
}

let t0 = null;
let spanCursor = 0;
const spansSeen = new Map();
function timeline(d) {
  spanCursor = d.cursor;
  for (const s of d.spans) { spansSeen.delete(s.task_id); spansSeen.set(s.task_id, s); }
  while (spansSeen.size > 5000) spansSeen.delete(spansSeen.keys().next().value);
  const spans = [...spansSeen.values()];
  const rows = workerRows(spans);
  const now = Date.now() / 1000;
  for (const s of spans) if (t0 === null || s.start < t0) t0 = s.start;
  const S = {left: [], right: [], bottom: [], top: [], color: [], line: [], name: [], state: [],
             worker: [], duration: [], error: [], node: [], attempt: [], placement: []};
  for (const s of spans) {
    const i = rows.get(s.worker);
    S.left.push(s.start - t0); S.right.push((s.end || now) - t0);
    S.bottom.push(i + 0.12); S.top.push(i + 0.88);
    S.color.push(spanColor(s));
    S.line.push(s.fault ? "#212529" : s.state === "FAILED" ? "#e03131" : null);
    S.name.push(s.name); S.state.push(C.short[s.state] || s.state); S.worker.push(s.worker);
    S.duration.push(s.end ? secs(s.end - s.start) : "running"); S.error.push(s.error || "");
    S.node.push((s.node || "").slice(0, 12)); S.attempt.push(attempt(s));
    S.placement.push(s.placement || "");
    if (s.cancelled) S.state[S.state.length - 1] = "cancelled";
  }
  const src = model("spans"); if (src) src.data = S;
  const ticker = model("rows_ticker"), axis = model("rows_axis"), range = model("rows_range");
  if (ticker && axis && range) {
    ticker.ticks = [...rows.values()].map((i) => i + 0.5);
    axis.major_label_overrides = new Map([...rows].map(([w, i]) => [i + 0.5, w]));
    range.start = 0; range.end = Math.max(1, rows.size);
  }
  const failed = spans.some((s) => s.state === "FAILED");
  $("keys").innerHTML = [...new Set(spans.filter((s) => !s.fault).map((s) => s.name))].sort()
    .map((n) => `<span><span class="chip" style="background:${colorOf(n)}"></span>${esc(n)}` +
      "</span>").join("") +
    (failed ? '<span><span class="chip" style="border:2px solid #e03131"></span>failed</span>' : "") +
    faultKey(spans) || '<span>no task ran yet</span>';
}

function objects(d) {
  const U = {xs: [], ys: [], node: [], color: []};
  let i = 0, top = 1;
  for (const [nid, points] of Object.entries(d.history)) {
    U.xs.push(points.map((p) => p[0] * 1000)); U.ys.push(points.map((p) => p[1]));
    U.node.push(nid); U.color.push(PALETTE[i++ % PALETTE.length]);
  }
  for (const n of d.nodes) top = Math.max(top, n.capacity || 0, n.used || 0);
  const src = model("usage"); if (src) src.data = U;
  const range = model("usage_range"); if (range) { range.start = 0; range.end = top; }
  $("stores").innerHTML = table([
    ["node", (n) => short(n.node_id), "", "110px"],
    ["used / capacity", (n) => meter(n.used, n.capacity, `${bytes(n.used)} / ${bytes(n.capacity)}`, "#7048e8")],
    ["objects", (n) => String(n.count), "num", "80px"],
    ["live objects", (n) => `${n.live_objects} · ${bytes(n.live_bytes)}`, "num", "150px"],
    ["spilled now", (n) => bytes(n.spilled), "num", "90px"],
    ["spilled · restored", (n) => `${n.spilled_total || 0} · ${n.restored_total || 0}`, "num",
      "130px"],
    ["pulling", (n) => (n.pulls || []).map((p) =>
      meter(p.received, p.size, `${oid(p.object_id)} ${bytes(p.received)} / ${bytes(p.size)}`,
        "#1c7ed6")).join("") || '<span class="muted">none</span>', "", "220px"],
  ], d.nodes);
  $("largest").innerHTML = table([
    ["object", (o) => oid(o.object_id), "", "140px"],
    ["size", (o) => bytes(o.size), "num", "80px"],
    ["where", (o) => `<span>${esc((o.where || "").replace("_", " "))} ${short(o.node_id, 8)}</span>`,
      "", "150px"],
    ["copies", (o) => copies(o), "", "110px"],
    ["made by", (o) => madeBy(o), "", "18%"],
    ["cell", (o) => o.cell || (o.tag ? short(o.tag, 8) : ""), "", "70px"],
    ["owner", (o) => o.owner_name || o.owner || "", "", "13%"],
    ["kept alive by", (o) => refs(o)],
    ["borrowers", (o) => (o.borrowers || []).join(", ") ||
      (o.references ? "none" : ""), "", "12%"],
  ], d.largest, "no object in the store");
}

function copies(o) {
  const nodes = o.copies || [];
  if (!nodes.length) return "";
  const title = `secondary copies, pulled to node(s) ${nodes.map((n) => n.slice(0, 8)).join(", ")}`;
  return `<span title="${esc(title)}">+${nodes.length} · ` +
    `${nodes.map((n) => esc(n.slice(0, 8))).join(", ")}</span>`;
}

const REF_NAMES = {
  LOCAL_REFERENCE: ["ref", "an ObjectRef in its owner (LOCAL_REFERENCE)"],
  USED_BY_PENDING_TASK: ["pending task", "a task that takes it has not ended (USED_BY_PENDING_TASK)"],
  CAPTURED_IN_OBJECT: ["in an object", "a live object holds a ref to it (CAPTURED_IN_OBJECT)"],
  PINNED_IN_MEMORY: ["zero-copy value", "a value read from it without a copy pins it (PINNED_IN_MEMORY)"],
  BORROWED: ["borrowed", "other processes hold refs to it"],
};
function refs(o) {
  if (!o.references) {
    return `<span class="muted" title="its owner ${esc(o.owner || "")} is not a notebook of this ` +
      'Jupyter server: only the owner knows">owner elsewhere</span>';
  }
  const chips = Object.entries(o.references).map(([k, n]) => {
    const [label, tip] = REF_NAMES[k] || [k, k];
    return `<span class="ref" title="${esc(tip)}">${esc(label)}${n > 1 ? " ×" + n : ""}</span>`;
  });
  return chips.length ? `<span class="refs">${chips.join("")}</span>`
    : '<span class="muted">nothing: being freed</span>';
}
// "put at In [3], line 2" or "put at script.py:14" (a notebook cell's code is a temporary file)
function madeBy(o) {
  if (o.source === "task" || o.task) {
    return `<span title="a return of task ${esc(o.task || "")}">${esc(o.task || "a task")}() returned it</span>`;
  }
  const site = o.call_site || "";
  const m = site.match(/^(.*):(\d+)$/);
  if (!m) return "put";
  const cellFile = /ipykernel_\d+\/\d+\.py$/.test(m[1]);
  const where = cellFile && o.cell ? `${o.cell}, line ${m[2]}` : `${m[1].split("/").pop()}:${m[2]}`;
  return `<span title="${esc(site)}">put at ${esc(where)}</span>`;
}

function nodes(d) {
  const now = Date.now() / 1000;
  $("nodes").innerHTML = table([
    ["node", (n) => short(n.node_id), "", "110px"],
    ["address", (n) => n.raylet_address || "", "", "150px"],
    ["state", (n) => n.alive ? pill("ALIVE") : pill("DEAD") + " " + esc(n.death_reason || ""), "", "160px"],
    ["CPU used / total", (n) => meter((n.resources_used || {}).CPU || 0, (n.resources || {}).CPU || 0,
      `${(n.resources_used || {}).CPU || 0} / ${(n.resources || {}).CPU || 0}`)],
    ["memory", (n) => bytes((n.resources || {}).memory || 0), "num", "90px"],
    ["other resources", (n) => Object.keys(n.resources || {}).filter((k) =>
      !["CPU", "memory", "object_store_memory"].includes(k) && !k.startsWith("node:")).map((k) =>
      `${k} ${(n.resources_used || {})[k] || 0} / ${n.resources[k]}`).join(" · ") || "none", "", "14%"],
    ["object store", (n) => meter((n.store || {}).used || 0, (n.store || {}).capacity || 0,
      `${bytes((n.store || {}).used || 0)} / ${bytes((n.store || {}).capacity || 0)}`, "#7048e8")],
    ["workers", (n) => `${(n.load || {}).leased || 0} leased · ${(n.load || {}).idle_workers || 0} idle`, "", "140px"],
    ["queued", (n) => String((n.load || {}).queued || 0), "num", "70px"],
    ["heartbeat", (n) => n.alive ? secs(now - n.last_heartbeat) + " ago" : "", "num", "100px"],
  ], d.nodes, "no node");
}

function actors(d) {
  $("actors").innerHTML = table([
    ["class", (a) => a.class_name || "", "", "16%"],
    ["actor", (a) => short(a.actor_id), "", "110px"],
    ["name", (a) => a.name || "", "", "12%"],
    ["state", (a) => pill(a.state), "", "100px"],
    ["node", (a) => short(a.node_id), "", "110px"],
    ["pid", (a) => String(a.pid || ""), "num", "70px"],
    ["restarts", (a) => String(a.num_restarts || 0), "num", "70px"],
    ["pending calls", (a) => String(a.pending_calls || 0), "num", "100px"],
    ["death cause", (a) => a.death_cause || ""],
  ], d.actors, "no actor");
}

function notice(text, bad) {
  let el = $("notice");
  if (!el) {
    el = document.createElement("div");
    el.id = "notice";
    document.querySelector("header").after(el);
  }
  el.className = bad ? "notice bad" : "notice";
  el.textContent = text;
}
// Cancel through the notebook kernel that submitted the task (Jupyter's auth and XSRF token).
async function cancelTask(taskId) {
  notice(`cancelling task ${taskId.slice(0, 12)}…`);
  try {
    const r = await fetch(url("cancel"), {
      method: "POST", credentials: "same-origin", body: JSON.stringify({task_id: taskId}),
      headers: {"Content-Type": "application/json", "X-XSRFToken": C.xsrf || ""},
    });
    const body = await r.json().catch(() => ({}));
    if (r.ok) notice(`cancelled task ${taskId.slice(0, 12)}: its notebook's get() raises TaskCancelledError`);
    else notice(`could not cancel: ${body.error || body.message || "HTTP " + r.status}`, true);
  } catch (err) {
    notice(`could not cancel: ${err.message}`, true);
  }
}
document.addEventListener("click", (e) => {
  const button = e.target.closest && e.target.closest("button[data-cancel]");
  if (button) { button.disabled = true; cancelTask(button.dataset.cancel); }
});

let graph = null, version = -1, expanded = [];
async function graphPage(d) {
  if (d.unchanged) return;
  version = d.version;
  if (!graph) {
    const mod = await import(url(C.module));
    graph = mod.createGraph($("graph"), {
      send: (msg) => { if (msg.type === "cancel") cancelTask(msg.task); }, live: () => true,
      expand: (keys) => { expanded = keys; version = -1; tick(); },
    });
  }
  graph.draw(d);
}

const PAGES = {
  index: [() => url("overview"), overview],
  graph: [() => url("view", {version, expanded: expanded.join(",")}), graphPage],
  timeline: [() => url("timeline", {since: Date.now() / 1000 - 600, cursor: spanCursor}), timeline],
  objects: [() => url("objects"), objects],
  nodes: [() => url("nodes"), nodes],
  actors: [() => url("actors"), actors],
};
const [target, apply] = PAGES[C.page];
let timer = null;
async function tick() {
  if (["timeline", "objects"].includes(C.page) && !doc()) { setTimeout(tick, 100); return; }
  clearTimeout(timer);
  try {
    const r = await fetch(target(), {credentials: "same-origin"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    await apply(await r.json());
    $("status").textContent = "live · " + new Date().toLocaleTimeString();
    window.CELLFLEET_UPDATES = (window.CELLFLEET_UPDATES || 0) + 1;
  } catch (err) {
    $("status").textContent = "cannot update: " + err.message;
  }
  timer = setTimeout(tick, C.interval);
}
tick();
