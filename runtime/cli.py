"""The ``cellfleet`` command: start, inspect and stop a cluster on this machine.

    cellfleet start --head [--port 6379] [--num-cpus N] ...   start a GCS and a raylet, detached
    cellfleet start --address HEAD:PORT [--num-cpus N] ...    start a node that joins a cluster
    cellfleet status [--address HOST:PORT]                     nodes and jobs of every cluster
    cellfleet stop [--all]                                     stop this machine's nodes
    cellfleet up|down CLUSTER.yaml                             start/stop a cluster over SSH
    cellfleet microbenchmark [...]                             run the runtime's microbenchmarks
    cellfleet kernel install|list|uninstall [...]              manage cellfleet kernelspecs
    cellfleet lab [--notebook-dir D] [--port P]                JupyterLab with the cellfleet kernel
    cellfleet dashboard [--address A] [--port P] [--token T]   the dashboard without Jupyter
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from . import __version__
from . import _messages as m
from ._rpc import connect
from ._session import Session, find_token, root_dir
from .exceptions import AuthenticationError, RayError

if TYPE_CHECKING:
    from .node import HeadNode

__all__ = ["main"]

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
UNREACHABLE = (OSError, asyncio.TimeoutError, RayError)  # ConnectionError is an OSError


class CliError(Exception):
    """A failure to report as one line on stderr, with an exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


async def _query(address: str, token: bytes, *messages: m.Message, timeout: float = 5.0) -> list:
    conn = await connect(address, token, timeout=timeout)
    try:
        return [await asyncio.wait_for(conn.request(msg), timeout) for msg in messages]
    finally:
        conn.close()


def _last_line(path: Any) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    return next((line for line in reversed(lines) if line), "")


# -- start ----------------------------------------------------------------------------------


def _node_arguments(args: argparse.Namespace) -> dict[str, Any] | None:
    """``--resources`` parsed, and every node option checked; CliError saying what is wrong."""
    from .api import _check_init_arguments

    if args.host in ("0.0.0.0", "::", ""):
        raise CliError(f"--host {args.host!r} is not an address other nodes can reach: give "
                       "this machine's IP address on the cluster's network")
    try:
        resources = json.loads(args.resources) if args.resources else None
    except ValueError as exc:
        raise CliError(f"--resources is not valid JSON: {exc}") from None
    try:
        _check_init_arguments(None, args.num_cpus, args.num_gpus, resources,
                              args.object_store_memory)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return resources


def _cluster_token(address: str, token_file: str | None) -> bytes:
    """The token to join ``address`` with: ``--token-file``, ``CELLFLEET_TOKEN``, or the
    head's session on this machine."""
    if token_file:
        try:
            return Path(token_file).read_text().strip().encode()
        except OSError as exc:
            raise CliError(f"cannot read --token-file {token_file}: {exc.strerror}") from None
    try:
        return find_token(address)
    except ConnectionError as exc:
        raise CliError(f"{exc}, or pass --token-file PATH") from None


def _join(args: argparse.Namespace) -> int:
    """``cellfleet start --address HEAD:PORT``: a detached raylet that joins that cluster."""
    from .api import _check_reachable, _resolve_address
    from .node import start_worker_node

    if args.head:
        raise CliError("--head starts a new cluster and --address joins one: give one of them")
    if args.gcs_storage:
        raise CliError("--gcs-storage belongs to the head node: drop it when joining")
    resources = _node_arguments(args)
    try:
        address = _resolve_address(args.address)
    except (ValueError, ConnectionError) as exc:
        raise CliError(str(exc)) from None
    try:
        _check_reachable(address)
    except ConnectionError as exc:
        raise CliError(str(exc), code=1) from None
    token = _cluster_token(address, args.token_file)
    try:
        (nodes,) = asyncio.run(_query(address, token, m.GetNodes(), timeout=5.0))
    except AuthenticationError:
        raise CliError(f"the cluster at {address} refused this node's token: use the 'token' "
                       "file of the head's session (--token-file, or CELLFLEET_TOKEN)") from None
    except UNREACHABLE as exc:
        raise CliError(f"no cellfleet cluster answers at {address} "
                       f"({str(exc) or type(exc).__name__}): is the head running, and is "
                       "its port reachable from here?", code=1) from None
    versions = {n.get("version") for n in nodes if n["alive"]} - {None, __version__}
    if versions:
        raise CliError(f"the cluster at {address} runs cellfleet {', '.join(sorted(versions))} "
                       f"and this machine {__version__}: install the same version on every "
                       "node")
    node = _started(lambda: start_worker_node(
        address, token, num_cpus=args.num_cpus, num_gpus=args.num_gpus, resources=resources,
        object_store_memory=args.object_store_memory, host=args.host, detached=True))
    if Session.current() is None:
        node.session.mark_current()
    print(f"Started a cellfleet node at {node.raylet_address}, joined to the cluster at "
          f"{address}\n  node id: {node.node_id.hex()}\n  session: {node.session.path}\n\n"
          "Stop it with:\n    cellfleet stop")
    return 0


def _start(args: argparse.Namespace) -> int:
    """``cellfleet start --head``: a detached GCS and raylet, left running once they answer."""
    from .node import start_head

    if args.address:
        return _join(args)
    if not args.head:
        raise CliError("say what to start: 'cellfleet start --head' (or --address HOST:PORT)")
    resources = _node_arguments(args)
    head = _started(lambda: start_head(
        num_cpus=args.num_cpus, num_gpus=args.num_gpus, resources=resources,
        object_store_memory=args.object_store_memory, gcs_storage=args.gcs_storage,
        host=args.host, port=args.port, detached=True))
    head.session.mark_current()
    _announce(head)
    path = head.session.path
    print(f"Started a cellfleet head node at {head.gcs_address}\n"
          f"  session: {path}\n  logs:    {path / 'logs'}\n\n"
          "Connect from Python on this machine:\n"
          "    import cellfleet\n    cellfleet.init(address=\"auto\")\n"
          "or by address (from any user that can read the token):\n"
          f"    export CELLFLEET_TOKEN=$(cat {head.session.token_file})\n"
          f"    cellfleet.init(address=\"{head.gcs_address}\")\n\n"
          "Stop it with:\n    cellfleet stop")
    return 0


def _started(start: Callable[[], HeadNode]) -> HeadNode:
    """Start a node's processes and wait until they answer; stopped again if they do not."""
    try:
        node = start()
    except OSError as exc:
        raise CliError(str(exc)) from None
    try:
        _wait_until_ready(node)
    except BaseException:
        node.stop()
        raise
    return node


def _wait_until_ready(head: Any) -> None:
    """Poll until the GCS answers and lists the raylet's node alive; fail if a process dies."""
    token = head.session.token()
    deadline = time.monotonic() + START_TIMEOUT_S
    last_error = "no answer"
    while time.monotonic() < deadline:
        for proc, name in zip(head.processes, head.names, strict=True):
            if proc.poll() is not None:
                log = head.session.logs / f"{name}.log"
                raise CliError(f"the {name} process exited during startup "
                               f"({_last_line(log) or f'exit code {proc.returncode}'}); "
                               f"see {log}")
        try:
            (nodes,) = asyncio.run(_query(head.gcs_address, token, m.GetNodes(), timeout=1.0))
        except UNREACHABLE as exc:  # not up yet, or a process died: checked above
            last_error = str(exc) or type(exc).__name__
            nodes = []
        if any(n["node_id"] == head.node_id and n["alive"] for n in nodes):
            return
        time.sleep(0.05)  # a polling interval, not synchronization
    raise CliError(f"the cluster did not come up within {START_TIMEOUT_S:.0f}s ({last_error}); "
                   f"see {head.session.logs}")


# -- status ---------------------------------------------------------------------------------


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def _running_clusters() -> list[tuple[str, str, str | None]]:
    """``(address, what started it, token file)`` of every cluster this user runs here."""
    try:
        from .extension.discovery import list_clusters
    except ImportError:  # jupyter-server missing: only the CLI's cluster is known
        session = Session.current()
        address = session.info().get("gcs_address") if session is not None else None
        return [(address, "cellfleet start", None)] if address else []
    found = []
    for cluster in list_clusters():
        session = Session(Path(cluster.session_dir)) if cluster.session_dir else None
        if cluster.kernel_id:
            kind = f"Jupyter kernel {cluster.kernel_id}"
        elif session is not None and session.info().get("detached"):
            kind = "cellfleet start"
        elif cluster.source == "kernel":
            kind = f"kernel (pid {cluster.pid})"
        else:
            kind = "cellfleet.init() in a script or notebook"
        found.append((cluster.address, kind, cluster.token_file))
    return found


def _status_all(args: argparse.Namespace) -> int:
    """``cellfleet status`` without ``--address``: every cluster of this user, one by one."""
    clusters = _running_clusters()
    if not clusters:
        raise CliError("no running cellfleet cluster found on this machine "
                       "(start one with 'cellfleet start --head')", code=1)
    print(f"{len(clusters)} cellfleet cluster(s) running for this user "
          "('cellfleet status --address HOST:PORT' shows one):")
    for address, kind, _ in clusters:
        print(f"  {address:<22} {kind}")
    code = 0
    for address, kind, token_file in clusters:
        print(f"\n== {address} ({kind}) ==")
        try:
            _status(argparse.Namespace(**{**vars(args), "address": address,
                                          "token_file": token_file}))
        except CliError as exc:
            print(f"cellfleet status: {exc}")
            code = exc.code
    return code


def _status(args: argparse.Namespace) -> int:
    """``cellfleet status``: the nodes (resources, object store) and jobs of a cluster."""
    address = args.address
    if address is None:
        return _status_all(args)
    try:
        token_file = getattr(args, "token_file", None)  # a listed cluster's own token
        token = Path(token_file).read_text().strip().encode() if token_file else \
            find_token(address)
        nodes, jobs, tables = asyncio.run(_query(address, token, m.GetNodes(), m.ListJobs(),
                                                 m.GetTableStats()))
    except UNREACHABLE as exc:
        raise CliError(f"no cellfleet cluster answers at {address}: {exc}", code=1) from None
    print(f"Cluster at {address}: {sum(n['alive'] for n in nodes)} of {len(nodes)} node(s) alive")
    for node in nodes:
        state = "alive" if node["alive"] else f"DEAD ({node.get('death_reason', '')})"
        if node.get("state") == "SUSPECT":
            state = "SUSPECT (its heartbeats are late)"
        print(f"\nnode {node['node_id'].hex()}  {node['raylet_address']}  {state}")
        for name, total in sorted(node["resources"].items()):
            if name.startswith("node:"):
                continue
            free = node["available"].get(name, 0.0)
            fmt = _gib if name in ("memory", "object_store_memory") else "{:g}".format
            print(f"  {name:<22} {fmt(free)} free of {fmt(total)}")
        store = node.get("store") or {}
        capacity = store.get("capacity", node.get("store_capacity", 0))
        print(f"  object store           {_gib(store.get('used', 0))} used of {_gib(capacity)}"
              f", {store.get('num_objects', 0)} object(s)")
        load = node.get("load") or {}
        if node["alive"]:
            print(f"  load                   {load.get('leased', 0)} leased, "
                  f"{load.get('queued', 0)} queued, {load.get('idle_workers', 0)} idle "
                  "worker(s)")
    print(f"\n{len(jobs)} job(s)")
    for job in jobs:
        state = "RUNNING" if job["alive"] else "FINISHED"
        print(f"  job {job['job_id']:<4} {state:<9} pid {job['driver_pid']:<8} "
              f"{job.get('entrypoint', '')}")
    _print_table_stats(tables)
    return 0


def _print_table_stats(tables: dict) -> None:
    """What the bounded tables hold and what they dropped (forgotten, never silently)."""
    events, actors = tables["task_events"], tables["actors"]
    dead_nodes = tables["nodes"]["dead_forgotten"]
    by_workers = tables["dropped_by_workers"]
    print("\nbounded tables (dropped = oldest entries let go at the bound)")
    print(f"  task records           {events['tasks']}, dropped {events['dropped_tasks']}")
    print(f"  object records         {events['objects']}, dropped {events['dropped_objects']}")
    print(f"  actors                 {actors['total']} ({actors['dead']} dead), "
          f"dead forgotten {actors['dead_forgotten']}")
    print(f"  dead nodes forgotten   {dead_nodes}")
    print(f"  old jobs forgotten     {tables.get('jobs', {}).get('finished_forgotten', 0)}")
    print("  dropped by workers     " + ", ".join(
        f"{by_workers.get(kind, 0)} {kind.replace('_', ' ')}"
        for kind in ("task_events", "object_events", "log_lines")))
    missed = tables.get("dropped_publications") or {}
    print("  missed by slow readers " + (", ".join(
        f"{n} {channel} message(s)" for channel, n in sorted(missed.items())) or "nothing"))


# -- stop -----------------------------------------------------------------------------------


def _session_processes(session: Session) -> list[psutil.Process]:
    """The live processes of a session (checked by command line, so a reused pid is safe)."""
    found: list[psutil.Process] = []
    for pid in session.info().get("pids", []):
        try:
            proc = psutil.Process(pid)
            if str(session.path) in " ".join(proc.cmdline()):
                found += [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
    return found


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Poll until the processes have exited; returns those still running at the deadline."""

    def running(proc: psutil.Process) -> bool:
        try:
            return proc.status() != psutil.STATUS_ZOMBIE  # a zombie only awaits its reaper
        except psutil.Error:
            return False

    deadline = time.monotonic() + timeout
    while (alive := [p for p in procs if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return alive


def _announce(head: HeadNode) -> None:
    """Register the cluster in Jupyter's runtime directory, where the dashboard finds it."""
    try:
        from .extension.discovery import register_cluster
    except ImportError:  # jupyter-server missing: the dashboard finds sessions anyway
        return
    register_cluster(head.gcs_address, head.session.token_file,
                     pid=head.processes[0].pid, session_dir=head.session.path)


def _stop_session(session: Session) -> int:
    """SIGTERM a session's processes, SIGKILL what is left at the deadline; how many there were."""
    procs = found = _session_processes(session)
    for sig in ("terminate", "kill"):
        for proc in procs:
            try:
                getattr(proc, sig)()
            except psutil.Error:
                pass
        procs = _wait_gone(procs, STOP_TIMEOUT_S)
        if not procs:
            break
    Session.clear_current(session.path)
    address = session.info().get("gcs_address")
    if address and session.info().get("head", True):  # a joined node leaves its cluster up
        from .extension.discovery import unregister_cluster

        unregister_cluster(address)
    return len(found)


def _stop(args: argparse.Namespace) -> int:
    """``cellfleet stop [--all]``: the nodes ``cellfleet start`` started on this machine
    (heads and joined nodes), or every session's live processes."""
    sessions = [Session(p) for p in sorted(root_dir().glob("session_*"))]
    if not args.all:
        current = Session.current()
        sessions = [s for s in sessions if s.info().get("detached") or s == current]
    stopped = 0
    for session in sessions:
        count = _stop_session(session)
        if count:
            stopped += 1
            info = session.info()
            what = ("the cluster at" if info.get("head", True)
                    else f"the node {info.get('raylet_address', '?')} of the cluster at")
            print(f"Stopped {what} {info.get('gcs_address', '?')} ({count} process(es), "
                  f"{session.path})")
    if not stopped:
        print("No running cellfleet cluster found.")
    return 0


# -- entry point ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellfleet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a head node, or a node that joins a cluster")
    start.add_argument("--head", action="store_true", help="start a head node (GCS + raylet)")
    start.add_argument("--address", help="join the cluster whose head is at HOST:PORT")
    start.add_argument("--token-file", default=None, metavar="PATH",
                       help="the cluster's token when joining (default: CELLFLEET_TOKEN, or "
                            "the head's session on this machine)")
    start.add_argument("--port", type=int, default=6379, help="the GCS port (default 6379)")
    start.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    start.add_argument("--num-cpus", type=int, default=None)
    start.add_argument("--num-gpus", type=int, default=None)
    start.add_argument("--resources", default=None, help='JSON, e.g. \'{"custom": 2}\'')
    start.add_argument("--object-store-memory", type=int, default=None, metavar="BYTES")
    start.add_argument("--gcs-storage", default=None, metavar="redis://HOST:PORT",
                       help="keep the GCS tables in Redis (default: in memory)")
    status = sub.add_parser("status", help="show the nodes and jobs of a cluster")
    status.add_argument("--address", default=None,
                        help="HOST:PORT of one cluster (default: every cluster of this user)")
    stop = sub.add_parser("stop", help="stop the cluster started by 'cellfleet start'")
    stop.add_argument("--all", action="store_true", help="stop every cluster of this user")
    sub.add_parser("up", help="start a head and workers over SSH from CLUSTER.yaml",
                   add_help=False)
    sub.add_parser("down", help="stop what 'cellfleet up CLUSTER.yaml' started", add_help=False)
    sub.add_parser("microbenchmark", help="run the runtime's microbenchmarks", add_help=False)
    sub.add_parser("kernel", help="install, list or remove cellfleet kernelspecs", add_help=False)
    sub.add_parser("dashboard", help="serve the dashboard without Jupyter", add_help=False)
    lab = sub.add_parser("lab", help="open JupyterLab with the cellfleet kernel")
    lab.add_argument("--notebook-dir", default=None,
                     help="folder to open (default: ./notebooks if present, else .)")
    lab.add_argument("--port", type=int, default=8888)
    lab.add_argument("--no-browser", action="store_true")
    return parser


def _lab(args: argparse.Namespace) -> int:
    """JupyterLab on the course notebooks, new notebooks on the cellfleet kernel."""
    from jupyter_client.kernelspec import KernelSpecManager

    if "cellfleet" not in KernelSpecManager().find_kernel_specs():
        from .kernel import install

        install.main(["install", "--sys-prefix"])
    folder = args.notebook_dir or ("notebooks" if os.path.isdir("notebooks") else ".")
    argv = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={folder}",
            f"--port={args.port}", "--MappingKernelManager.default_kernel_name=cellfleet"]
    if args.no_browser:
        argv.append("--no-browser")
    if os.geteuid() == 0:
        argv.append("--allow-root")  # containers and CI machines often run as root
    os.execv(sys.executable, argv)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``cellfleet`` command; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["microbenchmark"]:
        from . import microbenchmark

        return microbenchmark.main(argv[1:]) or 0
    if argv[:1] == ["dashboard"]:
        from .extension import standalone

        return standalone.main(argv[1:]) or 0
    if argv[:1] in (["up"], ["down"]):
        from . import ssh_launcher

        return ssh_launcher.main(argv)
    if argv[:1] == ["kernel"]:
        from .kernel import install

        return install.main(argv[1:]) or 0
    args = _parser().parse_args(argv)
    commands = {"start": _start, "status": _status, "stop": _stop, "lab": _lab}
    try:
        return commands[args.command](args)
    except CliError as exc:
        print(f"cellfleet {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
