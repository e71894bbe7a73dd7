"""The kernel's runtime: started in the background, connected, restarted, stopped, shown.

``KernelRuntime.start()`` returns at once; a thread connects the kernel's backend
(``backends``: cellfleet's runtime, local or at ``CELLFLEET_ADDRESS``, or a Ray cluster with
``CELLFLEET_BACKEND=ray`` / ``ray://`` addresses). Whatever needs the runtime first calls
``wait()``. Every connection this kernel makes gets the kernel's output router as the place
its tasks' lines go (``Backend.route_output``).
"""

from __future__ import annotations

import html
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from cellfleet import exceptions as cf_exceptions

from . import backends

__all__ = ["ClusterError", "ClusterInfo", "KernelRuntime", "parse_num_cpus"]


class ClusterError(RuntimeError):
    """A runtime that could not be started or reached: shown as one message, no traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31mClusterError\x1b[0m: {self}"]


def parse_num_cpus(value: str | None) -> float | int | None:
    if value is None or value.strip() == "":
        return None
    number = float(value)
    if number < 0:
        raise ValueError(f"CELLFLEET_NUM_CPUS must be >= 0, got {value!r}")
    return int(number) if number.is_integer() else number


def explain_connection_error(exc: BaseException, address: str | None) -> str:
    """One sentence for a failure to start or reach a runtime."""
    where = f"the cluster at {address}" if address else "a local runtime"
    text = (str(exc) or type(exc).__name__).rstrip(" :.")
    if isinstance(exc, cf_exceptions.AuthenticationError):
        return (f"could not connect to {where}: it refused this kernel's token ({text}). Set "
                "CELLFLEET_TOKEN to the cluster's token, or CELLFLEET_TOKEN_FILE to the token "
                "file in its session directory.")
    if "no token" in text.lower():
        return f"could not connect to {where}: {text}."
    if isinstance(exc, (ConnectionError, OSError, TimeoutError)):
        return (f"could not connect to {where}: {text}. Is a cluster running there "
                "('cellfleet start --head')? '%cluster connect HOST:PORT' or "
                "'%cluster restart' tries again.")
    return f"could not start {where}: {type(exc).__name__}: {text}."


class KernelRuntime:
    """Owns the kernel's connection to a cluster (local or remote) through its backend."""

    def __init__(self, *, address: str | None, num_cpus: float | int | None,
                 log_handler: Callable[[list], None] | None,
                 backend: str | None = None) -> None:
        name, address = backends.choose(address or None, backend)
        self.address = address  # None: start a local runtime
        self.backend: backends.Backend = backends.make(name)
        self.num_cpus = num_cpus
        self.log_handler = log_handler
        self._ready = threading.Event()
        self._ready.set()  # nothing is starting
        self._error: BaseException | None = None
        self._error_reported = True
        self._lock = threading.Lock()
        self.started_at: float | None = None
        self.info: Any = None

    # -- starting -------------------------------------------------------------------------

    def start(self, *, background: bool = True) -> None:
        """Start (or connect to) the runtime; in a thread unless ``background`` is False."""
        with self._lock:
            if not self._ready.is_set():
                return  # already starting
            self._ready.clear()
            self._error = None
        if background:
            threading.Thread(target=self._start, name="cellfleet-kernel-start",
                             daemon=True).start()
        else:
            self._start()

    def _start(self) -> None:
        try:
            self.info = self.backend.connect(self.address, num_cpus=self.num_cpus)
            self.started_at = time.time()
            self.hook()
            self._announce()
        except BaseException as exc:  # noqa: BLE001 - reported in the next cell
            self._error = exc
            self._error_reported = False
        finally:
            self._ready.set()

    @property
    def starting(self) -> bool:
        return not self._ready.is_set()

    def wait(self, timeout: float | None = None) -> BaseException | None:
        """Wait until a start in progress is over; the error it ended with, if any."""
        self._ready.wait(timeout)
        return self._error

    def take_unreported_error(self) -> str | None:
        """The start-up failure as one message, once."""
        if self._error is None or self._error_reported:
            return None
        self._error_reported = True
        return explain_connection_error(self._error, self.address)

    def hook(self) -> None:
        """Route the current connection's output through the kernel (idempotent)."""
        self.backend.route_output(self.log_handler)

    def output_barrier(self, timeout: float = 0.5) -> None:
        """Wait until the output of tasks that have finished has been routed.

        Called at the end of each cell so the cell's output precedes its idle status (what
        nbclient and "Run all" rely on).
        """
        if not self.starting:
            self.backend.output_barrier(timeout)

    # -- changing ---------------------------------------------------------------------------

    def _announce(self) -> None:
        """Register the cluster in Jupyter's runtime dir, where the dashboard finds it."""
        from cellfleet.extension.discovery import register_cluster

        entry = self.backend.registration(self.info or {})
        if entry is None:
            return
        try:
            from ipykernel.connect import get_connection_file

            kernel_id = os.path.basename(get_connection_file())[len("kernel-"):-len(".json")]
        except Exception:  # noqa: BLE001 - not inside a kernel (tests, scripts)
            kernel_id = None
        register_cluster(**entry, kernel_id=kernel_id)

    def stop(self) -> None:
        """Disconnect; stop the local runtime (a connected cluster keeps running)."""
        self.wait()
        if self.info:
            from cellfleet.extension.discovery import unregister_cluster

            unregister_cluster(self.info["address"])
        self.backend.shutdown()
        self.info = None
        self.started_at = None

    def restart(self, *, num_cpus: float | int | None = None) -> None:
        self.stop()
        if num_cpus is not None:
            self.num_cpus = num_cpus
        self._start_now()

    def connect(self, address: str) -> None:
        """Connect to ``address`` (``ray://``, ``ray:auto``: a Ray cluster; see
        ``backends.choose``), on the backend it names."""
        name, target = backends.choose(address, self.backend.name)
        self.stop()
        previous = self.address, self.backend
        if name != self.backend.name:
            self.backend = backends.make(name)
        self.address = target
        try:
            self._start_now()
        except ClusterError:
            self.address, self.backend = previous
            raise

    def start_local(self, *, num_cpus: float | int | None = None) -> None:
        self.stop()
        self.address = None
        if num_cpus is not None:
            self.num_cpus = num_cpus
        self._start_now()

    def _start_now(self) -> None:
        self.start(background=False)
        error = self._error
        if error is not None:
            self._error_reported = True
            raise ClusterError(explain_connection_error(error, self.address)) from None

    def is_running(self) -> bool:
        return self.backend.is_connected()

    def ensure(self) -> None:
        """Wait for the runtime; raise one clear ClusterError if there is none."""
        error = self.wait()
        if self.backend.is_connected():
            return
        if error is not None:
            self._error_reported = True
            raise ClusterError(explain_connection_error(error, self.address))
        raise ClusterError("the runtime is stopped: '%cluster restart' starts a local one, "
                           "'%cluster connect HOST:PORT' connects to a cluster")

    # -- looking ----------------------------------------------------------------------------

    def describe(self) -> ClusterInfo:
        self.ensure()
        try:
            return self.backend.describe(connected=bool(self.address))
        except ClusterError as exc:
            raise ClusterError(f"{exc} {self._retry_hint()}") from None

    def _retry_hint(self) -> str:
        if self.address:
            return (f"'%cluster restart' connects to {self.address} again, '%cluster connect "
                    "local' starts a local runtime, '%cluster connect HOST:PORT' connects "
                    "elsewhere.")
        return ("'%cluster restart' starts a new local runtime, '%cluster connect HOST:PORT' "
                "connects to a cluster.")

    def logs_dir(self) -> str:
        return self.backend.logs_dir()


def dashboard_url(address: str, page: str = "") -> str:
    """The dashboard's path on the Jupyter server this notebook is served from."""
    from cellfleet.extension.discovery import cluster_id

    base = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
    if not base.endswith("/"):
        base += "/"
    return f"{base}cellfleet/dashboard/{cluster_id(address)}/{page}"


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def _count(number: int, noun: str) -> str:
    """``1 object``, ``2 objects``."""
    return f"{number} {noun}" + ("" if number == 1 else "s")


class ClusterInfo:
    """What ``%cluster`` shows: the cluster's nodes and their resources (a rich repr)."""

    def __init__(self, *, address: str, mode: str, session_dir: str | None, node_id: str,
                 job_id: int | str, nodes: list[dict], dashboard_url: str,
                 backend: str = "cellfleet") -> None:
        self.backend = backend
        self.address = address
        self.mode = mode
        self.session_dir = session_dir
        self.node_id = node_id
        self.job_id = job_id
        self.nodes = nodes
        self.dashboard_url = dashboard_url

    @property
    def title(self) -> str:
        """Which backend: "cellfleet cluster" or "Ray cluster (cellfleet's Ray backend)"."""
        return "cellfleet cluster" if self.backend == "cellfleet" else \
            "Ray cluster (cellfleet's Ray backend)"

    @property
    def alive_nodes(self) -> list[dict]:
        return [n for n in self.nodes if n["alive"]]

    def total(self, resource: str) -> float:
        return sum(n["resources"].get(resource, 0.0) for n in self.alive_nodes)

    def available(self, resource: str) -> float:
        return sum(n["available"].get(resource, 0.0) for n in self.alive_nodes)

    def _rows(self) -> list[dict[str, str]]:
        rows = []
        for node in self.nodes:
            res, free = node["resources"], node["available"]
            store = node.get("store") or {}
            capacity = store.get("capacity", res.get("object_store_memory", 0.0))
            rows.append({
                "node": node["node_id"].hex()[:12]
                + (" (this kernel's)" if node["node_id"].hex() == self.node_id else ""),
                "address": node["raylet_address"],
                "state": "alive" if node["alive"] else f"dead {node.get('death_reason') or ''}",
                "CPU": f"{free.get('CPU', 0):g} / {res.get('CPU', 0):g}",
                "GPU": f"{free.get('GPU', 0):g} / {res.get('GPU', 0):g}",
                "store": f"{_gib(store.get('used', 0))} / {_gib(capacity)}"
                         f" ({_count(store.get('num_objects', 0), 'object')})",
            })
        return rows

    def __repr__(self) -> str:
        alive = self.alive_nodes
        lines = [
            f"{self.title} at {self.address} ({self.mode}), {len(alive)} of "
            f"{_count(len(self.nodes), 'node')} alive, CPU {self.available('CPU'):g} free of "
            f"{self.total('CPU'):g}, GPU {self.available('GPU'):g} free of "
            f"{self.total('GPU'):g}",
        ]
        for row in self._rows():
            lines.append("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
        lines.append(f"  dashboard: {self.dashboard_url}")
        if self.session_dir:
            lines.append(f"  session: {self.session_dir}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        rows = self._rows()
        head = "".join(f"<th style='text-align:left'>{esc(k)}</th>" for k in rows[0]) \
            if rows else ""
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:left'>{esc(v)}</td>" for v in r.values())
            + "</tr>" for r in rows
        )
        dashboard = (f"<a href='{esc(self.dashboard_url)}' target='_blank'>"
                     f"{esc(self.dashboard_url)}</a>")
        session = (f"<div>session: <code>{esc(self.session_dir)}</code></div>"
                   if self.session_dir else "")
        return (
            "<div class='cellfleet-cluster'>"
            f"<b>{esc(self.title)}</b> at <code>{esc(self.address)}</code> ({esc(self.mode)})"
            f" &middot; {len(self.alive_nodes)} of {_count(len(self.nodes), 'node')} alive"
            f" &middot; CPU {self.available('CPU'):g} free of {self.total('CPU'):g}"
            f" &middot; GPU {self.available('GPU'):g} free of {self.total('GPU'):g}"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<div>dashboard: {dashboard}</div>{session}</div>"
        )

