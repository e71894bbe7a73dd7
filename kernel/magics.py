"""The kernel's magics: ``%%remote``, ``%remote``, ``%cluster``, ``%dashboard``,
``%taskgraph``, ``%chaos`` and ``%cellfleet``."""

from __future__ import annotations

import re
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .cluster import ClusterError
from .remote import RemoteOptions, parse_options, unknown_option

__all__ = ["CellfleetMagics"]

_FLAG_OPTIONS = {"--nowait", "--all-nodes"}
_VALUE_OPTIONS = {"--push", "--pull", "--num-cpus", "--num-gpus", "--resources", "--name",
                  "--actor", "--node"}
_LEADING_OPTION = re.compile(r"\s*(--[a-z-]+)(?:(?:=|\s+)('[^']*'|\"[^\"]*\"|\S+))?")


def split_line_options(line: str) -> tuple[str, str]:
    """``%remote [--opt value ...] EXPR`` -> (options, expression)."""
    options: list[str] = []
    rest = line
    while True:
        match = _LEADING_OPTION.match(rest)
        if match is None:
            break
        if match.group(1) not in _FLAG_OPTIONS | _VALUE_OPTIONS:
            raise UsageError(unknown_option(match.group(1), sorted(_FLAG_OPTIONS | _VALUE_OPTIONS),
                                            "%remote"))
        name = match.group(1)
        if name in _FLAG_OPTIONS:
            options.append(name)
            rest = rest[match.start(1) + len(name):]
            continue
        if match.group(2) is None:
            raise UsageError(f"{name} needs a value")
        options += [name, match.group(2)]
        rest = rest[match.end():]
    return " ".join(options), rest.strip()


@magics_class
class CellfleetMagics(Magics):
    """Magics of the cellfleet kernel (registered on start)."""

    def __init__(self, shell: Any, kernel: Any) -> None:
        super().__init__(shell)
        self.kernel = kernel
        self._ssh_cluster: Any = None  # the ClusterSpec '%cluster start FILE' started
        self._chaos: Any = None  # the ChaosRunner of '%chaos', made on first use

    @magic_arguments()
    @argument("--push", metavar="A,B", default=None,
              help="send exactly these names from the notebook (instead of the names the "
                   "analysis finds the cell reading)")
    @argument("--pull", metavar="C,D", default=None,
              help="bring back exactly these names (instead of every name the cell assigns); "
                   "--pull '' brings back none")
    @argument("--num-cpus", type=float, default=None, metavar="N",
              help="CPUs the task needs (default 1)")
    @argument("--num-gpus", type=float, default=None, metavar="N",
              help="GPUs the task needs (default 0)")
    @argument("--resources", default=None, metavar="JSON",
              help='custom resources the task needs, e.g. \'{"memory_gb": 4}\'')
    @argument("--name", default=None,
              help="the task's name in the dashboard and in its output's prefix "
                   "(default cell-N)")
    @argument("--nowait", action="store_true",
              help="return a handle at once; the assigned names arrive in the notebook "
                   "when the cell finishes (handle.wait(), handle.result())")
    @argument("--actor", default=None, metavar="NAME",
              help="run inside the named actor NAME (created on first use), whose namespace "
                   "persists from cell to cell: a remote interpreter. Names the actor "
                   "defines win over the notebook's; only --pull names come back")
    @argument("--all-nodes", action="store_true",
              help="run once on every live node; the result (and each --pull name) is a "
                   "dict keyed by node id")
    @argument("--node", default=None, metavar="NODE_ID",
              help="run on this node (an id prefix is enough); recorded only until node "
                   "affinity scheduling exists")
    @line_cell_magic
    def remote(self, line: str, cell: str | None = None) -> Any:
        """Run the cell (%%remote) or one expression (%remote EXPR) as a task on the cluster.

        The names the cell reads from the notebook are sent with it (cloudpickle; ObjectRefs
        by reference; modules by name), the names it assigns come back into the notebook,
        and the value of its last expression is the cell's result. Its prints stream into
        the cell while it runs; an error shows the traceback of the cell's own lines.
        Something that cannot be sent is named in an error before anything runs.

        Examples::

            %%remote --num-cpus 2
            total = sum(x * x for x in data)
            total

            %remote expensive(42)
            handle = %remote --nowait slow()
        """
        if cell is None:
            option_text, expression = split_line_options(line)
            args = parse_options(self.remote, option_text, "%remote")
            opts = RemoteOptions.from_args(args)
            header = f"%remote {line}\n"
            return self.kernel.remote_runner.run(opts, expression, header=header,
                                                 line_offset=0, mode="eval")
        args = parse_options(self.remote, line, "%%remote")
        opts = RemoteOptions.from_args(args)
        header = f"%%remote {line}\n"
        return self.kernel.remote_runner.run(opts, cell, header=header, line_offset=1)

    @magic_arguments()
    @argument("page", nargs="?", default="",
              help="graph, timeline, actors, objects or nodes (default: the index)")
    @argument("--height", type=int, default=600, help="height of the embedded page in pixels")
    @argument("--link", action="store_true", help="only show a link, do not embed the page")
    @line_magic
    def dashboard(self, line: str) -> Any:
        """Show the cluster's live dashboard page in the output (or a link to it).

        %dashboard            the index of pages
        %dashboard graph      the task graph (also: timeline, actors, objects, nodes)
        %dashboard --link     a link that opens the page in a new browser tab
        """
        from IPython.display import HTML, IFrame

        from cellfleet.extension.pages import PAGES

        from .cluster import dashboard_url

        args = parse_argstring(self.dashboard, line)
        if args.page and args.page not in PAGES:
            raise UsageError(f"%dashboard: no page {args.page!r}; pages: {', '.join(PAGES)}")
        runtime = self.kernel.runtime
        runtime.ensure()
        url = dashboard_url(runtime.describe().address, args.page)
        if args.link:
            return HTML(f"<a href='{url}' target='_blank'>cellfleet dashboard: {url}</a>")
        return IFrame(url, width="100%", height=args.height)

    @magic_arguments()
    @argument("--cell", action="store_true", help="only the tasks of this cell")
    @argument("--all", action="store_true", help="every task of the cluster")
    @argument("--max-nodes", type=int, default=300, metavar="N",
              help="above N tasks, group the tasks of each function into one node")
    @argument("--height", type=int, default=460, help="height in pixels")
    @line_magic
    def taskgraph(self, line: str) -> Any:
        """Show the live task graph of this notebook's tasks (a widget).

        %taskgraph          the tasks this notebook submitted (and the tasks they started)
        %taskgraph --cell   only this cell's tasks
        %taskgraph --all    every task of the cluster

        Click a task for its details and lineage, a group to open it; the slider replays
        the states. The graph is saved with the notebook (with its widget state).
        """
        args = parse_argstring(self.taskgraph, line)
        if args.cell and args.all:
            raise UsageError("%taskgraph: --cell or --all, not both")
        self.kernel.runtime.ensure()
        from cellfleet.widgets import TaskGraph

        scope = "cell" if args.cell else "all" if args.all else "notebook"
        return TaskGraph(scope, max_nodes=args.max_nodes, height=args.height)

    @magic_arguments()
    @argument("setting", help="monitor")
    @argument("value", nargs="?", default=None, help="on or off")
    @line_magic
    def cellfleet(self, line: str) -> Any:
        """Kernel settings.

        %cellfleet monitor off   no live strip under cells whose remote work runs long
        %cellfleet monitor on    the strip again (the default)
        """
        args = parse_argstring(self.cellfleet, line)
        if args.setting != "monitor" or args.value not in (None, "on", "off"):
            raise UsageError("%cellfleet monitor [on|off]")
        strips = self.kernel.strips
        if args.value is not None:
            strips.enabled = args.value == "on"
        print(f"cellfleet: the per-cell monitor is {'on' if strips.enabled else 'off'}")
        return None

    @line_magic
    def chaos(self, line: str) -> None:
        """Inject a fault into a cluster this kernel started (for teaching fault tolerance).

        %chaos kill-worker [--seed N]       kill a worker that runs a task now
        %chaos kill-node [NODE] [--seed N]  kill a node (not the head): raylet and workers
        %chaos kill-actor ACTOR             kill an actor's process (name or id prefix)
        %chaos restart-gcs                  kill the GCS and start it again (Redis storage)
        %chaos slow-node NODE MS            freeze a node's processes for MS milliseconds

        NODE is an address (127.0.0.2) or a node id prefix. Each fault is announced here and
        drawn on the dashboard's timeline and in the task graph (a FAULT record).
        """
        from .chaos import ChaosRunner

        if self._chaos is None:
            self._chaos = ChaosRunner()
        self.kernel.runtime.ensure()
        self._chaos.run(line)

    @magic_arguments()
    @argument("action", nargs="?", default="show",
              help="show (default), connect ADDR, restart, start, stop")
    @argument("address", nargs="?", default=None,
              help="for connect: the cluster's HOST:PORT, 'auto' or 'local', or a Ray "
                   "cluster: ray://HOST:10001, ray:auto, ray:HOST:PORT; for start: a "
                   "cluster file (YAML) to start over SSH, as 'cellfleet up' does")
    @argument("--num-cpus", type=float, default=None, metavar="N",
              help="for restart/start: CPUs of the new local runtime")
    @line_magic
    def cluster(self, line: str) -> Any:
        """Show the cluster, or change it.

        %cluster                   the backend (cellfleet or Ray), nodes, CPUs, GPUs, object
                                   store, dashboard link
        %cluster connect HOST:PORT disconnect (stopping a local runtime), connect there
        %cluster connect ray://HOST:10001   the same on an existing Ray cluster (Ray Client;
                                   also ray:auto, ray:HOST:PORT; needs 'cellfleet[ray]')
        %cluster restart           stop and start again (a connected cluster keeps running:
                                   only this kernel's work and connection are released)
        %cluster start             start a local runtime (after stop)
        %cluster start hosts.yaml  start a cluster over SSH ('cellfleet up'), connect to it
        %cluster stop              disconnect; stop the local runtime (and what
                                   '%cluster start hosts.yaml' started: 'cellfleet down')
        """
        args = parse_argstring(self.cluster, line)
        runtime = self.kernel.runtime
        action = args.action
        num_cpus = _whole(args.num_cpus)
        if action == "show":
            return runtime.describe()
        if action == "connect":
            if not args.address:
                raise UsageError("%cluster connect HOST:PORT")
            self.kernel.remote_runner.forget_actors()
            runtime.connect(args.address)
            return runtime.describe()
        if action == "restart":
            self.kernel.remote_runner.forget_actors()
            runtime.restart(num_cpus=num_cpus)
            return runtime.describe()
        if action == "start" and args.address:
            self._start_over_ssh(args.address)
            return runtime.describe()
        if action == "start":
            runtime.wait()
            if runtime.is_running():
                raise ClusterError("a runtime is running already: use '%cluster restart'")
            runtime.start_local(num_cpus=num_cpus)
            return runtime.describe()
        if action == "stop":
            self.kernel.remote_runner.forget_actors()
            runtime.stop()
            spec, self._ssh_cluster = self._ssh_cluster, None
            if spec is not None:
                _stop_over_ssh(spec)
            print("cellfleet: stopped (this kernel has no runtime now; '%cluster restart' or "
                  "'%cluster connect HOST:PORT' gets one)")
            return None
        raise UsageError(f"%cluster: unknown action {action!r} "
                         "(show, connect, restart, start, stop)")

    def _start_over_ssh(self, path: str) -> None:
        """``cellfleet up PATH``, then connect the kernel to the new cluster."""
        import os

        from cellfleet.ssh_config import ConfigError, load_config
        from cellfleet.ssh_launcher import LaunchError, describe, up

        if self._ssh_cluster is not None:
            raise ClusterError(f"this kernel started the cluster '{self._ssh_cluster.name}' "
                               "already: '%cluster stop' stops it first")
        try:
            spec = load_config(path)
            result = up(spec)
        except (ConfigError, LaunchError) as exc:
            raise ClusterError(str(exc)) from None
        self._ssh_cluster = spec
        print(describe(result, path))
        print("(it keeps running after this kernel ends: '%cluster stop' stops it)")
        self.kernel.remote_runner.forget_actors()
        os.environ["CELLFLEET_TOKEN_FILE"] = str(result.token_file)
        try:
            self.kernel.runtime.connect(result.head_address)
        except ClusterError as exc:
            raise ClusterError(f"{exc} (the cluster is up: '%cluster stop' stops it)") from None


def _whole(value: float | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def _stop_over_ssh(spec: Any) -> None:
    """``cellfleet down`` for the cluster ``%cluster start FILE`` started."""
    import os

    from cellfleet.ssh_launcher import LaunchError, down

    os.environ.pop("CELLFLEET_TOKEN_FILE", None)
    try:
        down(spec, say=lambda line: print(f"cellfleet: {line}"))
    except LaunchError as exc:
        raise ClusterError(str(exc)) from None
