"""The engines the kernel runs on: cellfleet's own runtime (default) and an existing Ray cluster.

``choose(address)`` turns what the user said (``CELLFLEET_BACKEND``, ``RAY_ADDRESS``,
``%cluster connect ADDRESS``) into a backend name and the address that backend connects to;
``make(name)`` builds the backend (Ray is imported only when it is chosen).
"""

from __future__ import annotations

import os

from .base import Backend, NodeSummary, StateSource, TaskOptions

__all__ = ["BACKENDS", "Backend", "NodeSummary", "StateSource", "TaskOptions", "choose",
           "default_backend", "make"]

BACKENDS = ("cellfleet", "ray")


def default_backend() -> str:
    """``$CELLFLEET_BACKEND`` (cellfleet unless it says ray); a clear error for a typo."""
    name = (os.environ.get("CELLFLEET_BACKEND") or "cellfleet").strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"CELLFLEET_BACKEND={name!r}: use one of {', '.join(BACKENDS)}")
    return name


def choose(address: str | None, current: str | None = None) -> tuple[str, str | None]:
    """``(backend, address)`` for an address as the user wrote it.

    ``ray://HOST:10001`` (Ray Client), ``ray:auto`` (the Ray cluster on this machine) and
    ``ray:HOST:PORT`` (a Ray GCS) choose Ray; ``local`` is a local cluster of the current
    backend; anything else is an address of the current backend (default
    ``$CELLFLEET_BACKEND``, whose Ray address defaults to ``$RAY_ADDRESS``).
    """
    backend = current or default_backend()
    if address and address.startswith("ray://"):
        return "ray", address
    if address and address.startswith("ray:"):
        return "ray", address[len("ray:"):] or "auto"
    if address and address.startswith("cellfleet:"):
        rest = address[len("cellfleet:"):]
        return "cellfleet", None if rest in ("", "local") else rest
    if address in ("local", ""):
        return backend, None
    if address is None and backend == "ray":
        return "ray", os.environ.get("RAY_ADDRESS") or None
    return backend, address


def make(name: str) -> Backend:
    """A backend by name; Ray's says how to install it when Ray is missing."""
    if name == "ray":
        from .ray_backend import RayBackend

        return RayBackend()
    if name == "cellfleet":
        from .cellfleet_backend import CellfleetBackend

        return CellfleetBackend()
    raise ValueError(f"no backend {name!r}: use one of {', '.join(BACKENDS)}")
