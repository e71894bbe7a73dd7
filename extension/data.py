"""What the API and the pages show: GCS answers turned into plain JSON data.

Each GCS question opens a short-lived authenticated connection to the cluster's GCS on the
running event loop (Jupyter's own loop inside the server), asks, and closes it. Task views
(``view``, ``timeline``, ``overview``, the actors' pending calls) read only what changed,
through the cluster's ``live.ClusterState`` (the GCS's incremental cursor); it and the GCS's
node, actor and object tables are read in the background, so a request is answered from
state at most a second or so old and never waits on the GCS once that state exists. What only
an owner knows (cancelling its task, what keeps its objects alive, its cells' names) is asked
of this server's notebook kernels (``kernels``). Log files are read in a thread, bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cellfleet import _messages as m
from cellfleet.widgets.model import cancelled_error, was_cancelled

from . import kernels
from .discovery import ClusterInfo
from .live import state_of
from .sources import source_of

__all__ = [
    "NotCancelled",
    "actors",
    "cancel",
    "graph",
    "limits",
    "logs",
    "nodes",
    "objects",
    "overview",
    "sample_stores",
    "tasks",
    "timeline",
    "view",
]

MAX_TASKS = 1_000_000
WINDOW = 10_000  # tasks read by the pages' periodic requests
TIMEOUT_S = 5.0
STREAM_SPANS = 300  # the overview's task stream: the newest spans of the last minute
SAMPLE_S = 2.0  # the object stores' use is sampled this often, page open or not
DISCOVER_S = 10.0  # the sampler looks for new clusters this often
MAX_CLUSTERS = 32  # clusters sampled
OWNED_TTL_S = 2.0
MAX_CELL_LABELS = 10_000  # how long the kernels' answers about their objects are served


def plain(value: Any) -> Any:
    """JSON-safe: bytes become hex."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


async def ask(cluster: ClusterInfo, *messages: m.Message) -> list[Any]:
    """The cluster's answers (its GCS's, or a Ray cluster's in the same shapes)."""
    return await source_of(cluster).ask(*messages)


def limits(cluster: ClusterInfo) -> list[str]:
    """What the cluster's engine does not expose, one sentence each (shown on the pages)."""
    try:
        return list(source_of(cluster).limits)
    except ConnectionError:
        return []


def _last_ts(task: dict) -> float:
    return max((task.get("events") or {}).values(), default=0.0)


def _duration(task: dict) -> float | None:
    start, end = task.get("start_time"), task.get("end_time")
    return end - start if start and end else None


async def _nodes(cluster: ClusterInfo) -> list[dict]:
    """The GCS's node table, as recent as ``live.STALE_S`` (see ``ClusterState.cached``)."""
    async def fetch() -> list[dict]:
        return (await ask(cluster, m.GetNodes()))[0]

    return await state_of(cluster).cached("nodes", fetch)


async def _actors(cluster: ClusterInfo) -> list[dict]:
    async def fetch() -> list[dict]:
        return (await ask(cluster, m.ListActors()))[0]

    return await state_of(cluster).cached("actors", fetch)


async def nodes(cluster: ClusterInfo) -> list[dict]:
    raw = await _nodes(cluster)
    out = []
    for node in raw:
        node = plain(node)
        total, avail = node.get("resources") or {}, node.get("available") or {}
        node["resources_used"] = {k: total[k] - avail.get(k, 0) for k in total}
        out.append(node)
    return out


async def tasks(cluster: ClusterInfo, *, state: str | None = None, name: str | None = None,
                tag: str | None = None, offset: int = 0, limit: int = 100) -> dict:
    filters = {k: v for k, v in (("state", state), ("name", name), ("tag", tag)) if v is not None}
    (selected,) = await ask(cluster, m.ListTasks(filters, MAX_TASKS))
    return {"total": len(selected), "offset": offset, "limit": limit,
            "tasks": [_said(plain(t)) for t in selected[offset : offset + limit]]}


def _said(task: dict) -> dict:
    """A record as the pages say it: a cancelled task's error is a TaskCancelledError (its
    worker reports the KeyboardInterrupt that stopped it)."""
    task["cancelled"] = was_cancelled(task)
    if task["cancelled"]:
        task["error_message"] = cancelled_error(task)
    return task


def _task_node(task: dict) -> dict:
    task = _said(dict(task))
    return {
        "id": task["task_id"], "name": task.get("name", "?"), "state": task.get("state"),
        "node_id": task.get("node_id"), "worker_id": task.get("worker_id"),
        "worker_pid": task.get("worker_pid"), "duration": _duration(task),
        "error_message": task.get("error_message"), "parent_task_id": task.get("parent_task_id"),
        "tag": task.get("tag"), "type": task.get("type"), "actor_id": task.get("actor_id"),
        "cancelled": task["cancelled"],
        "updated": _last_ts(task),
    }


async def graph(cluster: ClusterInfo, *, since: float = 0.0, max_tasks: int = 2000) -> dict:
    """The newest ``max_tasks`` tasks that changed after ``since``, the objects they take and
    return, and the edges.

    ``cursor`` is the time of the latest change seen: pass it back as ``since``. Only the
    newest ``max_tasks`` tasks (by submission) are read from the GCS, so a poll costs the same
    at 100,000 tasks as at 1,000; ``counts`` (per function and state, over every task the GCS
    keeps, from ``SummarizeTasks``) is what an aggregated view draws, and ``truncated`` says
    how many tasks are outside the window.
    """
    raw_tasks, raw_objects, summary = await ask(
        cluster, m.ListTasks({}, max_tasks), m.ListObjects(max(4 * max_tasks, 1000)),
        m.SummarizeTasks())
    changed = []
    cursor = since
    for task in raw_tasks:
        ts = _last_ts(task)
        if ts > since:
            changed.append(task)
            cursor = max(cursor, ts)
    total = summary.get("total_tasks", len(raw_tasks))
    live = {o["object_id"]: o for o in raw_objects}
    objects: dict[str, dict] = {}
    edges = []
    for task in changed:
        for oid in task.get("args") or []:
            edges.append({"source": oid, "target": task["task_id"], "kind": "arg"})
            objects.setdefault(oid, {"id": oid})
        for oid in task.get("returns") or []:
            edges.append({"source": task["task_id"], "target": oid, "kind": "return"})
            objects.setdefault(oid, {"id": oid})
    for oid, obj in objects.items():
        info = live.get(oid)
        obj["live"] = info is not None
        if info is not None:
            obj.update({"size": info.get("size"), "where": info.get("where"),
                        "node_id": info.get("node_id")})
    counts = {name: dict(entry["state_counts"])
              for name, entry in (summary.get("summary") or {}).items()}
    return {
        "cursor": cursor, "since": since, "total_tasks": total,
        "truncated": max(0, total - len(raw_tasks)),
        "tasks": [_task_node(t) for t in changed], "objects": list(objects.values()),
        "edges": edges, "counts": counts,
    }


async def actors(cluster: ClusterInfo) -> list[dict]:
    state = state_of(cluster)
    await state.refresh(lambda *msgs: ask(cluster, *msgs))
    raw_actors = await _actors(cluster)
    pending = state.pending_calls()
    out = []
    for actor in raw_actors:
        actor = plain(actor)
        actor.pop("methods", None)
        actor["pending_calls"] = pending.get(actor["actor_id"], 0)
        out.append(actor)
    return out


class NotCancelled(Exception):
    """A cancel the dashboard could not carry out; the message says why and what to do."""


async def cancel(cluster: ClusterInfo, task_id: str, kernel_manager: Any) -> dict:
    """Cancel a running or queued task through the notebook kernel that submitted it."""
    if cluster.backend == "ray":
        raise NotCancelled("a Ray cluster's tasks are cancelled from the notebook that "
                           "submitted them: interrupt its cell (the kernel cancels the cell's "
                           "Ray tasks)")
    if kernel_manager is None:
        raise NotCancelled("tasks are cancelled by the process that submitted them: this "
                           "dashboard runs outside Jupyter, so cancel it there "
                           "(cellfleet.cancel(ref)) or open the dashboard in JupyterLab")
    replies = await kernels.ask_all(
        kernel_manager, {"op": "cancel", "task_id": task_id, "gcs": cluster.address},
        first=cluster.kernel_id)
    for reply in replies:
        if reply.get("status") == "ok":
            return {"cancelled": task_id, "kernel_id": reply["kernel_id"]}
    errors = [r["error"] for r in replies if r.get("status") in ("error", "not_owner")]
    raise NotCancelled(errors[0] if errors else
                       f"no notebook kernel of this Jupyter server submitted task {task_id}: "
                       "cancel it in the process that submitted it")


async def _owned(cluster: ClusterInfo, kernel_manager: Any, tags: list[str],
                 limit: int) -> list[dict]:
    """What the notebook kernels of this server say about the objects they own (kept in the
    cluster's state for ``OWNED_TTL_S``; a stale answer is served while a new one comes)."""
    state = state_of(cluster)

    async def fetch() -> list[dict]:
        replies = await kernels.ask_all(
            kernel_manager, {"op": "objects", "limit": limit, "tags": tags,
                             "gcs": cluster.address}, first=cluster.kernel_id)
        state.owned = (time.monotonic(), [r for r in replies if r.get("status") == "ok"])
        return state.owned[1]

    if kernel_manager is None:
        return []
    fetched, replies = state.owned
    if replies is None:
        return await fetch()
    if time.monotonic() - fetched > OWNED_TTL_S and not state.owned_refreshing:
        state.owned_refreshing = True
        task = asyncio.ensure_future(fetch())
        task.add_done_callback(lambda t: setattr(state, "owned_refreshing", False))
    return replies


def _object_rows(raw_objects: list[dict], owned: list[dict], names: dict[str, str],
                 largest: int) -> list[dict]:
    """The largest objects: the GCS's records (puts: call site, cell) merged with what their
    owners say (task returns too; references, borrowers)."""
    rows: dict[str, dict] = {}
    for obj in raw_objects:
        rows[obj["object_id"]] = dict(plain(obj), references=None, borrowers=None)
    cells: dict[str, str] = {}
    for reply in owned:
        cells.update(reply.get("cells") or {})
        owner_name = names.get(reply["kernel_id"]) or f"kernel {reply['kernel_id'][:8]}"
        for obj in reply.get("objects") or ():
            row = rows.setdefault(obj["object_id"], {"object_id": obj["object_id"]})
            for key in ("size", "where", "node_id", "source", "tag"):
                if row.get(key) is None:
                    row[key] = obj.get(key)
            row.update(owner=reply.get("address"), owner_name=owner_name, task=obj.get("task"),
                       references=obj.get("references") or {},
                       borrowers=obj.get("borrowers") or [])
    top = sorted(rows.values(), key=lambda o: o.get("size") or 0, reverse=True)[:largest]
    for row in top:
        row["cell"] = cells.get(row.get("tag") or "")
    return top


def _store_rows(raw_nodes: list[dict]) -> dict[str, dict]:
    """Node id -> its object store's figures (what the GCS's heartbeats report)."""
    per_node = {}
    for node in raw_nodes:
        store = node.get("store") or {}
        per_node[node["node_id"].hex()] = {
            "node_id": node["node_id"].hex(),
            "used": store.get("used", 0),
            "capacity": store.get("capacity", node.get("store_capacity", 0)),
            "count": store.get("num_objects", 0),
            "spilled": store.get("spilled_bytes", 0),  # bytes now on disk
            "spilled_total": store.get("spilled_total", 0),  # objects written out, ever
            "restored_total": store.get("restored_total", 0),  # and read back in
            "pulls": [dict(p) for p in store.get("pulls") or []],  # copies arriving now
            "live_objects": 0, "live_bytes": 0,
        }
    return per_node


async def sample_stores(clusters: Callable[[], list[ClusterInfo]],
                        interval: float = SAMPLE_S) -> None:
    """Forever, every ``interval`` s: each cluster's store use per node into its history, so
    the objects page's chart shows what the extension saw from its start (or since it first
    found the cluster), not only from the moment the page opened."""
    found: list[ClusterInfo] = []
    looked = -DISCOVER_S
    while True:
        if time.monotonic() - looked >= DISCOVER_S:  # discovery reads files: not every time
            looked = time.monotonic()
            try:
                found = await asyncio.to_thread(clusters)
            except Exception:  # noqa: BLE001 - discovery failing now may work next time
                found = []
        for cluster in found[:MAX_CLUSTERS]:
            try:
                (raw,) = await ask(cluster, m.GetNodes())
            except Exception:  # noqa: BLE001 - a cluster going away is no reason to stop
                continue
            state_of(cluster).sample_usage(list(_store_rows(raw).values()))
        await asyncio.sleep(interval)


async def objects(cluster: ClusterInfo, *, largest: int = 20, kernel_manager: Any = None,
                  names: dict[str, str] | None = None) -> dict:
    """Store use per node (with the history the extension keeps) and the largest objects,
    each with the code that made it and what keeps it alive (see ``_object_rows``)."""
    state = state_of(cluster)

    async def fetch() -> list[dict]:
        return (await ask(cluster, m.ListObjects(WINDOW)))[0]

    raw_objects, raw_nodes = await asyncio.gather(state.cached("objects", fetch),
                                                  _nodes(cluster))
    per_node = _store_rows(raw_nodes)
    for obj in raw_objects:
        entry = per_node.get(obj.get("node_id") or "")
        if entry is not None:
            entry["live_objects"] += 1
            entry["live_bytes"] += obj.get("size") or 0
    tags = list(dict.fromkeys(o["tag"] for o in sorted(
        raw_objects, key=lambda o: o.get("size") or 0, reverse=True)[:largest] if o.get("tag")))
    owned = await _owned(cluster, kernel_manager, tags, largest)
    top = _object_rows(raw_objects, owned, names or {}, largest)
    state.sample_usage(list(per_node.values()))
    history = {nid: [list(p) for p in points] for nid, points in state.usage.items()}
    return {"nodes": list(per_node.values()), "total": len(raw_objects), "largest": top,
            "history": history, "owners_asked": len(owned)}


async def timeline(cluster: ClusterInfo, *, since: float = 0.0, limit: int = 5000,
                   cursor: int = 0) -> dict:
    """Spans of the newest ``limit`` tasks that ran and ended after ``since`` (or still run),
    each with its worker as ``node:pid``; pass the answer's ``cursor`` back to get only the
    spans that changed."""
    state = state_of(cluster)
    await state.refresh(lambda *msgs: ask(cluster, *msgs))
    return state.spans(since, limit, cursor)


async def _name_cells(cluster: ClusterInfo, kernel_manager: Any) -> None:
    """Learn from this server's kernels how their notebooks name the cells of the recent tasks
    ("In [3]"), for the graph's details and the recent tasks (asked in the background at most
    once a ``live.STALE_S``; the names are kept in the cluster's model, bounded)."""
    state = state_of(cluster)
    labels = state.model.cell_labels
    missing = list(dict.fromkeys(
        r["tag"] for r in state.recent(50) if r["tag"] and r["tag"] not in labels))
    if kernel_manager is None or not missing:
        return

    async def fetch() -> bool:
        replies = await kernels.ask_all(
            kernel_manager, {"op": "cells", "tags": missing, "gcs": cluster.address},
            first=cluster.kernel_id)
        for reply in replies:
            labels.update(reply.get("cells") or {})
        while len(labels) > MAX_CELL_LABELS:
            del labels[next(iter(labels))]
        return True

    await state.cached("cells", fetch)


async def view(cluster: ClusterInfo, *, expanded: set[str], version: int = -1,
               kernel_manager: Any = None) -> dict:
    """The task graph as the widget draws it (``GraphModel.view``), or ``{"version"}`` alone
    when nothing changed since ``version``."""
    state = state_of(cluster)
    await state.refresh(lambda *msgs: ask(cluster, *msgs))
    await _name_cells(cluster, kernel_manager)
    current = state.model.version
    if current == version:
        return {"version": current, "unchanged": True}
    return dict(state.view(expanded), version=current)


async def overview(cluster: ClusterInfo, kernel_manager: Any = None) -> dict:
    """The cluster's status page: progress per function, nodes, actors, recent task stream."""
    state = state_of(cluster)
    await state.refresh(lambda *msgs: ask(cluster, *msgs))
    await _name_cells(cluster, kernel_manager)
    raw_nodes, raw_actors = await asyncio.gather(_nodes(cluster), _actors(cluster))
    model = state.model
    functions = sorted(
        ({"name": key, "total": len(model.members[key]),
          "states": {s: n for s, n in model.counts[key].items() if n > 0}}
         for key in model.members if model.members[key]),
        key=lambda f: -f["total"])[:30]
    node_rows = []
    for node in raw_nodes:
        total, avail = node.get("resources") or {}, node.get("available") or {}
        store = node.get("store") or {}
        node_rows.append({
            "node_id": node["node_id"].hex(), "alive": node.get("alive", True),
            "address": node.get("raylet_address"),
            "cpu_used": total.get("CPU", 0) - avail.get("CPU", 0), "cpu": total.get("CPU", 0),
            "store_used": store.get("used", 0),
            "store_capacity": store.get("capacity", node.get("store_capacity", 0)),
        })
    actor_states = Counter(a.get("state") for a in raw_actors)
    return {"total_tasks": model.total(), "legend": model.legend(), "functions": functions,
            "nodes": node_rows, "actors": dict(actor_states),
            "stream": state.spans(time.time() - 60, STREAM_SPANS)["spans"],
            "recent": state.recent()}


MAX_LOG_FILES = 64  # the newest log files read per request
MAX_LOG_BYTES = 64 * 1024  # read from one file per request


def read_log(path: Path, *, tail: int, offset: int | None = None,
             max_bytes: int = MAX_LOG_BYTES) -> tuple[list[str], int, int]:
    """Lines of one log file without reading it whole: from byte ``offset`` on (at most
    ``max_bytes``, whole lines), or its last ``tail`` lines (found in its last ``max_bytes``).
    Returns the lines, the offset after them (pass it back for what follows) and the offset
    they start at."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        start = max(0, size - max_bytes) if offset is None else min(max(0, offset), size)
        f.seek(start)
        chunk = f.read(max_bytes)
    if offset is None and start > 0:  # the first line is cut: drop it
        cut = chunk.find(b"\n") + 1
        chunk, start = chunk[cut:], start + cut
    end = chunk.rfind(b"\n") + 1 if len(chunk) == max_bytes else len(chunk)
    if end == 0 and len(chunk) == max_bytes:  # one line longer than max_bytes
        end = len(chunk)
    lines = chunk[:end].decode(errors="replace").splitlines()
    return (lines[-tail:] if offset is None else lines), start + end, start


def _read_logs(directory: Path, tail: int, name: str | None,
               offset: int | None) -> dict[str, Any]:
    """The session's log files' tails (or one file from ``offset``), newest files first."""
    if name is not None:
        path = directory / Path(name).name
        if path.suffix != ".log" or not path.is_file():
            return {"files": {}, "offsets": {}}
        lines, after, _ = read_log(path, tail=tail, offset=offset)
        return {"files": {path.name: lines}, "offsets": {path.name: after}}
    paths = []
    for path in directory.glob("*.log"):
        try:
            paths.append((path.stat().st_mtime, path))
        except OSError:
            continue
    files, offsets = {}, {}
    for _, path in sorted(paths, reverse=True)[:MAX_LOG_FILES]:
        try:
            lines, after, _ = read_log(path, tail=tail)
        except OSError:
            continue
        files[path.name], offsets[path.name] = lines, after
    return {"files": dict(sorted(files.items())), "offsets": offsets}


async def logs(cluster: ClusterInfo, *, wait: float = 0.0, tail: int = 200,
               file: str | None = None, offset: int | None = None) -> dict:
    """Recent log lines.

    History comes from the session's log files when the cluster's session directory is on this
    machine: the last ``tail`` lines of the newest ``MAX_LOG_FILES`` files, or, with ``file``
    and ``offset``, what that file holds from ``offset`` on (``offsets`` in an answer says
    where to go on). Files are read in a thread, at most ``MAX_LOG_BYTES`` each, never whole
    and never on the server's event loop. With ``wait`` > 0 the handler also subscribes to the
    GCS ``logs`` channel for that many seconds and returns the tagged lines published
    meanwhile (a long poll).
    """
    history: dict[str, Any] = {"files": {}, "offsets": {}}
    if cluster.session_dir:
        history = await asyncio.to_thread(_read_logs, Path(cluster.session_dir, "logs"),
                                          max(1, tail), file, offset)
    live = []
    if wait > 0 and cluster.backend == "ray":
        await asyncio.sleep(min(wait, 30.0))  # a long poll with nothing to wait for: see limits
    elif wait > 0:
        got: asyncio.Queue = asyncio.Queue()
        from cellfleet._rpc import connect as _connect

        def on_publish(conn: Any, msg: m.Publish) -> None:
            got.put_nowait(msg.data)

        conn = await _connect(cluster.address, cluster.token(), {m.Publish: on_publish},
                              timeout=TIMEOUT_S)
        try:
            conn.send(m.Subscribe("logs"))
            deadline = asyncio.get_running_loop().time() + min(wait, 30.0)
            while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    batch = await asyncio.wait_for(got.get(), remaining)
                except asyncio.TimeoutError:
                    break
                for job_id, tag, task_id, name, pid, stream, line in batch:
                    live.append({"job_id": job_id, "tag": tag, "task_id": task_id,
                                 "name": name, "pid": pid, "stream": stream, "line": line})
        finally:
            conn.close()
    return {**history, "live": live}
