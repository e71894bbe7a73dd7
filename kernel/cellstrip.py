"""The per-cell live strip: under a cell whose remote work runs longer than ``after`` seconds,
its tasks' counts by state per function and a small timeline, replaced by a one-line summary
when the work ends.

``CellStrips.cell_started`` / ``cell_finished`` are called by the kernel around each cell. The
strip follows the cell's tasks (its tag, which nested tasks inherit) through the process's
task feed (``cellfleet.widgets.feed``: events pushed by the GCS), and publishes
``display_data`` / ``update_display_data`` with the cell's request as parent, so it stays
under its cell. A cell is watched only once it has run ``after`` seconds: a quick cell costs a
timer, nothing more. ``render_strip`` and ``render_summary`` are pure functions of the model.
"""

from __future__ import annotations

import html
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from cellfleet.widgets.model import COLORS, SHORT, STATES

__all__ = ["CellStrips", "StripModel", "render_strip", "render_summary", "settled"]

MAX_FUNCTIONS = 8
MAX_SPANS = 300
MAX_ROWS = 8
SETTLE_S = 2.0  # after the cell ends, wait this long at most for its tasks' last events


_RANK = {state: i for i, state in enumerate(STATES)}
MAX_TASKS = 100_000  # a cell's tasks the strip follows (beyond, it counts what it has)


class StripModel:
    """A cell's tasks as the strip shows them: per function the state counts, and each task's
    name, state, times and worker. Lighter than the graph model (the strip runs by default):
    records pushed by the GCS are merged into a few fields, other cells' are skipped at once.
    Once the GCS's group counts arrive (``add_groups``) the counts are theirs and only the
    newest ``MAX_SPANS`` records per function are kept, for the timeline."""

    scope = "cell"

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.records: dict[str, dict] = {}
        self.members: dict[str, dict[str, None]] = {}
        self.counts: dict[str, Counter] = {}
        self.version = 0
        self.counted = False
        self._seq: dict[str, int] = {}  # function -> the GCS sequence its counts are as of

    def in_scope(self, record: dict) -> bool:
        return record.get("tag") == self.tag

    def total(self) -> int:
        if self.counted:
            return sum(sum(c.values()) for c in self.counts.values())
        return len(self.records)

    def group_size(self, key: str) -> int:
        return sum(self.counts[key].values()) if key in self.counts else 0

    def add_groups(self, groups: list, cursor: int) -> None:
        """The GCS's counts ``[job_id, tag, name, {state: n}]`` as of sequence ``cursor``."""
        if not self.counted:
            self.counted = True
            self.counts.clear()
        for _, tag, name, counts in groups:
            if tag != self.tag or name is None or self._seq.get(name, -1) > cursor:
                continue
            self._seq[name] = cursor
            self.counts[name] = Counter(counts)
            self.members.setdefault(name, {})
            self.version += 1

    def add_records(self, records: list[dict]) -> None:
        tag, mine, counted = self.tag, self.records, self.counted
        for record in records:
            tid = record["task_id"]
            kept = mine.get(tid)
            state = record["state"]
            if kept is None:
                # a record without the cell's tag is another cell's, or has only its worker's
                # events so far (the GCS pushes it again, tagged, with the submission's)
                if record.get("tag") != tag or len(mine) >= MAX_TASKS:
                    continue
                name = record.get("name") or "?"
                kept = mine[tid] = {"task_id": tid, "name": name, "state": state}
                members = self.members.setdefault(name, {})
                members[tid] = None
                if not counted:
                    self.counts.setdefault(name, Counter())[state] += 1
                elif len(members) > MAX_SPANS:
                    del mine[next(iter(members))]
                    del members[next(iter(members))]
            elif state != kept["state"] and _RANK.get(state, 0) > _RANK.get(kept["state"], 0):
                if not counted:
                    counts = self.counts[kept["name"]]
                    counts[kept["state"]] -= 1
                    counts[state] += 1
                kept["state"] = state
            kept["start_time"] = record.get("start_time") or \
                (record.get("events") or {}).get("RUNNING")
            kept["end_time"] = record.get("end_time")
            kept["node_id"] = record.get("node_id")
            kept["worker_pid"] = record.get("worker_pid")
            self.version += 1


def _seconds(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.1f} s"


def render_strip(model: Any, started: float, now: float) -> str:
    """The live strip's HTML: per function a bar of states with counts, then a timeline."""
    rows = []
    keys = sorted(model.members, key=lambda k: -model.group_size(k))
    for key in keys[:MAX_FUNCTIONS]:
        counts = model.counts.get(key) or Counter()
        total = sum(counts.values())
        if not total:
            continue
        segments = "".join(
            f'<span style="display:inline-block;height:10px;width:{100 * n / total:.2f}%;'
            f'background:{COLORS[s]}" title="{n} {SHORT[s]}"></span>'
            for s, n in counts.items() if n > 0)
        text = " · ".join(f"{n} {SHORT[s]}" for s, n in counts.items() if n > 0)
        rows.append(
            f'<tr><td style="padding:0 8px 0 0;white-space:nowrap"><b>{html.escape(key)}</b> '
            f'× {total}</td><td style="width:40%;min-width:120px"><span style="display:flex;'
            f'width:100%;background:var(--jp-layout-color2,#eee)">{segments}</span></td>'
            f'<td style="padding:0 0 0 8px;color:var(--jp-ui-font-color2,#666);'
            f'white-space:nowrap">{text}</td></tr>')
    if len(keys) > MAX_FUNCTIONS:
        rows.append(f"<tr><td colspan=3>… and {len(keys) - MAX_FUNCTIONS} more functions</td></tr>")
    return (
        '<div class="cellfleet-strip" style="font-family:var(--jp-ui-font-family,sans-serif);'
        'font-size:12px;border-left:3px solid var(--jp-brand-color1,#1976d2);padding:2px 8px">'
        f"<div>cellfleet · {model.total()} tasks · {_seconds(now - started)}</div>"
        f'<table style="border-collapse:collapse;width:100%">{"".join(rows)}</table>'
        f"{_timeline(model, started, now)}</div>")


def _timeline(model: Any, started: float, now: float) -> str:
    spans = []
    lanes: dict[str, int] = {}
    for members in model.members.values():
        for tid in list(members)[-MAX_SPANS:]:
            record = model.records[tid]
            start = record.get("start_time")
            if not start:
                continue
            end = record.get("end_time") or now
            lane = f"{(record.get('node_id') or '')[:6]}:{record.get('worker_pid') or '?'}"
            if lane not in lanes and len(lanes) < MAX_ROWS:
                lanes[lane] = len(lanes)
            if lane in lanes:
                spans.append((lanes[lane], start, end, record["state"], record.get("name", "?")))
    if not spans:
        return ""
    width = max(now - started, 1e-3)
    bars = "".join(
        f'<rect x="{100 * max(0.0, s - started) / width:.3f}%" y="{row * 9 + 1}" '
        f'width="{max(0.3, 100 * (e - max(s, started)) / width):.3f}%" height="7" '
        f'fill="{COLORS.get(state, "#888")}"><title>{html.escape(name)}</title></rect>'
        for row, s, e, state, name in spans)
    height = len(lanes) * 9 + 2
    return (f'<svg width="100%" height="{height}" style="display:block;margin-top:3px;'
            f'background:var(--jp-layout-color2,#f3f3f3)">{bars}</svg>')


def render_summary(model: Any, seconds: float) -> str:
    """The line that replaces the strip: how many tasks of which functions, how long."""
    parts = []
    failed = 0
    for key in sorted(model.members, key=lambda k: -model.group_size(k))[:MAX_FUNCTIONS]:
        count = model.group_size(key)
        if count:
            parts.append(f"{key} ×{count}")
            failed += (model.counts.get(key) or Counter())["FAILED"]
    more = len(model.members) - MAX_FUNCTIONS
    if more > 0:
        parts.append(f"{more} more functions")
    tail = f" · {failed} failed" if failed else ""
    return (f"cellfleet: {model.total()} tasks ({', '.join(parts)}) in {_seconds(seconds)}"
            f"{tail}")


def settled(model: Any, since_end: float) -> bool:
    """Whether an ended cell's strip is final: every task it knows of ended, or ``SETTLE_S``
    passed. A cell whose tasks' events have not come yet (none known) is not settled."""
    if since_end > SETTLE_S:
        return True
    return bool(model.total()) and all(
        model.counts[k]["FINISHED"] + model.counts[k]["FAILED"] == model.group_size(k)
        for k in model.counts)


class _Strip:
    def __init__(self, tag: str, parent: dict) -> None:
        self.tag = tag
        self.parent = parent
        self.started = time.time()
        self.ended: float | None = None
        self.display_id: str | None = None
        self.listener: Any = None
        self.model: Any = None
        self.timer: threading.Timer | None = None


class CellStrips:
    """Strips of the running cells (see the module docstring)."""

    def __init__(self, send: Callable[[str, dict, dict], None], *, after: float = 1.0,
                 enabled: bool = True) -> None:
        self.send = send  # (msg_type, content, parent) -> publish on iopub
        self.after = after
        self.enabled = enabled
        self._strips: dict[str, _Strip] = {}
        self._unreachable: str | None = None  # a GCS the feed could not watch: not retried

    def cell_started(self, tag: str, parent: dict, label: str = "") -> None:
        """A cell begins (``label``: how the details panel names it, e.g. "In [3]")."""
        from cellfleet.widgets.feed import current_address, label_cell

        address = current_address() if tag else None
        if address is None:
            return
        if label:
            label_cell(tag, label)
        if not self.enabled or address == self._unreachable:
            return
        strip = _Strip(tag, parent)
        strip.model = StripModel(tag)
        # Watched only once the cell has run for ``after`` seconds: quick cells cost nothing.
        strip.timer = threading.Timer(self.after, self._watch, (strip, address))
        strip.timer.daemon = True
        self._strips[tag] = strip
        strip.timer.start()

    def _watch(self, strip: _Strip, address: str) -> None:
        """On the timer's thread: the cell still runs after ``after`` s, follow its tasks."""
        from cellfleet.widgets.feed import NoClusterError, feed

        if strip.ended is not None and strip.ended - strip.started < self.after:
            self._strips.pop(strip.tag, None)  # a quick cell that ended as the timer fired
            return
        try:
            source = feed()
            strip.listener = source.add(strip.model, lambda: self._refresh(source, strip),
                                        interval=0.5, tick=True, history=True)
        except NoClusterError:
            self._unreachable = address
            self._strips.pop(strip.tag, None)

    def cell_finished(self, tag: str) -> None:
        strip = self._strips.get(tag)
        if strip is None:
            return
        strip.ended = time.time()
        if strip.listener is None and strip.timer is not None:
            strip.timer.cancel()
            self._strips.pop(tag, None)

    def _refresh(self, source: Any, strip: _Strip) -> None:
        """On the feed's thread, every half second while the cell's strip lives."""
        now = time.time()
        model = strip.model
        if strip.ended is not None:
            if not settled(model, now - strip.ended):
                return
            source.remove(strip.listener)
            self._strips.pop(strip.tag, None)
            if not model.total():
                return  # the cell ran long, but none of its tasks
            last = max((r.get("end_time") or 0 for r in model.records.values()),
                       default=0) or strip.ended
            line = render_summary(model, max(last, strip.ended) - strip.started)
            # a cell that ended before its tasks' events came never showed a strip: its
            # summary is a new output, not an update
            kind = "display_data" if strip.display_id is None else "update_display_data"
            strip.display_id = strip.display_id or uuid.uuid4().hex
            self._publish(kind, strip, line,
                          f'<div class="cellfleet-strip-summary" style="color:'
                          f'var(--jp-ui-font-color2,#666);font-size:12px">'
                          f"{html.escape(line)}</div>")
            return
        if strip.display_id is None:
            if now - strip.started < self.after or not model.total():
                return
            strip.display_id = uuid.uuid4().hex
            kind = "display_data"
        else:
            kind = "update_display_data"
        self._publish(kind, strip, f"cellfleet: {model.total()} tasks running",
                      render_strip(model, strip.started, now))

    def _publish(self, kind: str, strip: _Strip, text: str, markup: str) -> None:
        content = {"data": {"text/plain": text, "text/html": markup}, "metadata": {},
                   "transient": {"display_id": strip.display_id}}
        self.send(kind, content, strip.parent)
