"""Where a cluster's view data comes from: its GCS, or a Ray cluster's state API.

``source_of(cluster)`` is the cluster's ``StateSource`` (``cellfleet.kernel.backends``): both
answer the same GCS messages with the same shapes, so ``data`` and the pages never ask which
engine runs the cluster. A source's ``limits`` say what the engine does not expose.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cellfleet import _messages as m
from cellfleet._rpc import connect

from .discovery import ClusterInfo

__all__ = ["GcsSource", "source_of"]

TIMEOUT_S = 5.0
MAX_SOURCES = 32
_ray_sources: dict[str, Any] = {}  # cluster id -> RayStateSource (its change cursor lives there)


class GcsSource:
    """A cellfleet cluster: each question on a short-lived authenticated GCS connection."""

    limits: tuple[str, ...] = ()

    def __init__(self, cluster: ClusterInfo) -> None:
        self.cluster = cluster

    async def ask(self, *messages: m.Message) -> list[Any]:
        conn = await connect(self.cluster.address, self.cluster.token(), timeout=TIMEOUT_S)
        try:
            futures = [conn.request(msg) for msg in messages]
            return list(await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT_S))
        finally:
            conn.close()


def source_of(cluster: ClusterInfo) -> Any:
    """The ``StateSource`` that answers for ``cluster``."""
    if cluster.backend != "ray":
        return GcsSource(cluster)
    source = _ray_sources.get(cluster.id)
    if source is None:
        if not cluster.state_url:
            raise ConnectionError("this Ray cluster was registered without its dashboard's "
                                  "address (Ray's state API): start Ray with its dashboard "
                                  "('ray[default]', --include-dashboard=true)")
        from cellfleet.kernel.backends.ray_state import RayStateSource

        source = _ray_sources[cluster.id] = RayStateSource(cluster.state_url)
        while len(_ray_sources) > MAX_SOURCES:
            del _ray_sources[next(iter(_ray_sources))]
    return source
