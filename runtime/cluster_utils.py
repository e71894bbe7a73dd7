"""``cellfleet.cluster_utils.Cluster``: a cluster of several nodes on this machine (Ray's helper).

Each node is its own raylet with its own object store and worker pool, bound to its own
loopback address (the head to 127.0.0.1, added nodes to 127.0.0.2, 127.0.0.3, ...), so nodes
differ by IP as real hosts do. The nodes' processes die with the process that made them::

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=2, resources={"a": 1})
    cellfleet.init(address=cluster.address)
    ...
    cellfleet.shutdown()
    cluster.shutdown()
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any

from . import _messages as m
from .node import HeadNode, start_head, start_worker_node

__all__ = ["Cluster", "ClusterNode", "cluster_not_supported"]

# Ray's flag for platforms where Cluster cannot run (Windows there); tests skip on it.
cluster_not_supported = False

NODE_DEFAULTS = {"num_cpus": 1, "object_store_memory": 150 * 2**20}  # Ray's for Cluster nodes
NODE_ARGS = {"num_cpus", "num_gpus", "resources", "object_store_memory"}
# Ray's node arguments that mean nothing here (accepted, as Ray's tests pass them).
IGNORED_ARGS = {"_system_config", "include_dashboard", "dashboard_host", "dashboard_port",
                "dashboard_agent_listen_port", "min_worker_port", "max_worker_port",
                "env_vars", "enable_object_reconstruction", "redis_port", "node_name",
                "labels", "_temp_dir", "memory", "namespace", "ray_client_server_port"}
WAIT_S = 30.0
RECHECK_S = 0.1  # while waiting for nodes: how often to ask again with no node change


class ClusterNode:
    """One node of a :class:`Cluster` (Ray's ``Node``: ``node_id``, ``address``...)."""

    def __init__(self, processes: HeadNode, head: bool) -> None:
        self._processes = processes
        self.head = head
        self.node_id = processes.node_id.hex()
        self.unique_id = self.node_id
        self.address = processes.raylet_address
        self.node_ip_address, _, port = self.address.rpartition(":")
        self.node_manager_port = int(port)
        self.session_dir = str(processes.session.path)

    def all_processes_alive(self) -> bool:
        return all(proc.poll() is None for proc in self._processes.processes)

    def __repr__(self) -> str:
        role = "head" if self.head else "node"
        return f"ClusterNode({role} {self.node_id[:8]} at {self.address})"


class Cluster:
    """Nodes started on this machine, each its own raylet on its own loopback address.

    The nodes' processes die with this process whatever ``shutdown_at_exit`` says (Ray's
    signature; their lifelines end them)."""

    def __init__(self, initialize_head: bool = False, connect: bool = False,
                 head_node_args: dict[str, Any] | None = None,
                 shutdown_at_exit: bool = True) -> None:
        self.head_node: ClusterNode | None = None
        self.worker_nodes: list[ClusterNode] = []
        self._removed: list[ClusterNode] = []
        self._next_host = 2
        self._connected = False
        if initialize_head:
            self.add_node(**(head_node_args or {}))
            if connect:
                self.connect()
        elif connect:
            raise ValueError("connect=True needs initialize_head=True: there is no cluster yet")

    @property
    def address(self) -> str:
        """The GCS address, for ``cellfleet.init(address=...)``."""
        if self.head_node is None:
            raise RuntimeError("the cluster has no head node yet: call add_node() first")
        return self.head_node._processes.gcs_address

    gcs_address = address

    def connect(self, namespace: str | None = None) -> Any:
        """``cellfleet.init(address=self.address)``."""
        from . import api

        info = api.init(address=self.address, namespace=namespace)
        self._connected = True
        return info

    def add_node(self, wait: bool = True, **node_args: Any) -> ClusterNode:
        """Start a node (the head first): ``num_cpus`` (default 1), ``num_gpus``,
        ``resources``, ``object_store_memory`` (default 150 MiB). With ``wait``, returns once
        the GCS lists it alive."""
        unknown = set(node_args) - NODE_ARGS - IGNORED_ARGS
        if unknown:
            raise TypeError(f"add_node() got unexpected argument(s) {sorted(unknown)}; it "
                            f"takes {sorted(NODE_ARGS)}")
        ignored = sorted(set(node_args) & IGNORED_ARGS - {"_system_config", "namespace"})
        if ignored:
            warnings.warn(f"add_node(): {ignored} are accepted and ignored", stacklevel=2)
        args = {**NODE_DEFAULTS, **{k: v for k, v in node_args.items() if k in NODE_ARGS}}
        from .api import _check_init_arguments

        _check_init_arguments(None, args.get("num_cpus"), args.get("num_gpus"),
                              args.get("resources"), args.get("object_store_memory"))
        if self.head_node is None:
            processes = start_head(host="127.0.0.1", **args)
            node = self.head_node = ClusterNode(processes, head=True)
        else:
            host = f"127.0.0.{self._next_host}"
            self._next_host += 1
            processes = start_worker_node(self.address, self._token(), host=host, **args)
            node = ClusterNode(processes, head=False)
            self.worker_nodes.append(node)
        if wait:
            self._wait(lambda alive: node.node_id in alive, f"node {node.node_id} to join",
                       node)
        return node

    def remove_node(self, node: ClusterNode, allow_graceful: bool = True) -> None:
        """Stop a node's processes (SIGKILL at once unless ``allow_graceful``); returns once
        the GCS has it dead. Removing the head stops the cluster."""
        node._processes.stop(graceful=allow_graceful)
        if node is self.head_node:
            self.head_node = None
            return
        self.worker_nodes.remove(node)
        self._removed.append(node)
        if self.head_node is not None:
            self._wait(lambda alive: node.node_id not in alive,
                       f"node {node.node_id} to be dead")

    def wait_for_nodes(self, timeout: float = WAIT_S) -> None:
        """Wait until the GCS lists every node of this cluster alive and no removed one."""
        wanted = {n.node_id for n in self.list_all_nodes()}
        gone = {n.node_id for n in self._removed}
        self._wait(lambda alive: wanted <= alive and not gone & alive,
                   f"{len(wanted)} node(s) alive", timeout=timeout)

    def list_all_nodes(self) -> list[ClusterNode]:
        """The head (if any) and the added nodes still in the cluster."""
        return ([self.head_node] if self.head_node else []) + list(self.worker_nodes)

    def shutdown(self) -> None:
        """Disconnect this process if ``connect`` connected it, and stop every node."""
        if self._connected:
            from . import api

            api.shutdown()
            self._connected = False
        for node in list(reversed(self.worker_nodes)):
            node._processes.stop()
            self.worker_nodes.remove(node)
        if self.head_node is not None:
            self.head_node._processes.stop()
            self.head_node = None

    # -- helpers --------------------------------------------------------------------------

    def _token(self) -> bytes:
        return self.head_node._processes.session.token()

    def _alive_nodes(self) -> set[str]:
        """The ids of the nodes the GCS holds alive now."""
        alive: set[str] = set()

        def take(ids: set[str]) -> bool:
            alive.update(ids)
            return True

        self._wait(take, "the GCS's nodes")
        return alive

    def _wait(self, done: Any, what: str, node: ClusterNode | None = None,
              timeout: float = WAIT_S) -> None:
        """Until ``done(ids of the alive nodes)``: one connection to the GCS, subscribed to
        its node changes, asks again whenever a node joins or dies (and every
        ``RECHECK_S``, when it also checks that ``node``'s processes still run)."""
        from ._rpc import connect
        from .api import _in_thread

        async def wait() -> None:
            import asyncio

            changed = asyncio.Event()
            deadline = time.monotonic() + timeout
            conn = None
            try:
                while True:
                    if conn is None or not conn.is_open:
                        try:
                            conn = await connect(self.address, self._token(),
                                                 {m.Publish: lambda c, msg: changed.set()},
                                                 timeout=5)
                            conn.send(m.Subscribe("node"))
                        except (OSError, ConnectionError):
                            conn = None
                            if done(set()):  # no GCS to answer: no node is alive
                                return
                    if conn is not None:
                        changed.clear()
                        try:
                            nodes = await conn.request(m.GetNodes())
                        except (OSError, ConnectionError):
                            nodes = None
                        if nodes is not None and done(
                                {n["node_id"].hex() for n in nodes if n["alive"]}):
                            return
                    if node is not None and not node.all_processes_alive():
                        failure = node._processes.startup_failure()
                        raise RuntimeError(f"a node of the cluster did not start: {failure}")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
                    with contextlib.suppress(TimeoutError):  # no GCS yet: soon again
                        await asyncio.wait_for(changed.wait(), RECHECK_S if conn else 0.01)
            finally:
                if conn is not None:
                    conn.close()

        _in_thread(wait())
