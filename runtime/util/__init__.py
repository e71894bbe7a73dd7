"""Utilities on top of the core API, under Ray's names."""

from __future__ import annotations

import socket
from typing import Any

from .actor_pool import ActorPool
from .placement_group import (
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

__all__ = ["ActorPool", "get_current_placement_group", "get_node_ip_address",
           "get_placement_group", "list_named_actors", "placement_group",
           "placement_group_table", "remove_placement_group"]


def list_named_actors(all_namespaces: bool = False) -> list[Any]:
    """Names of the named actors not yet dead in this job's namespace; with
    ``all_namespaces``, ``{"name": ..., "namespace": ...}`` for every namespace."""
    from .. import _messages as m
    from ..api import _core

    core = _core()
    named = [(a["name"], a["namespace"]) for a in core.request("gcs", m.ListActors())
             if a["name"] and a["state"] != "DEAD"]
    if all_namespaces:
        return [{"name": name, "namespace": namespace} for name, namespace in named]
    return [name for name, namespace in named if namespace == core.namespace]


def get_node_ip_address() -> str:
    """The IP address of this node as the cluster knows it."""
    from .. import _context

    core = _context.core
    if core is not None and core.address:
        return core.address.rpartition(":")[0]
    return socket.gethostbyname("localhost")
