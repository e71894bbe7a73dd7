"""Where the GCS keeps the tables it needs to recover: in memory, or in a Redis server.

Tables are named maps from bytes to bytes. The GCS writes every change through to storage
and, with Redis, reloads all tables when it starts, so a restarted GCS finds the cluster as it
was. Task events are not stored here: they are bounded, in-memory observability data.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol
from urllib.parse import urlparse

__all__ = ["MemoryStorage", "RedisStorage", "Storage", "open_storage"]

TABLES = ("nodes", "jobs", "functions", "kv", "actors")


class Storage(Protocol):
    """The interface both backends implement."""

    async def put(self, table: str, key: bytes, value: bytes) -> None: ...
    async def delete(self, table: str, key: bytes) -> None: ...
    async def load(self, table: str) -> dict[bytes, bytes]: ...
    async def close(self) -> None: ...


class MemoryStorage:
    """Tables in this process only: nothing to install, lost when the GCS exits."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[bytes, bytes]] = defaultdict(dict)

    async def put(self, table: str, key: bytes, value: bytes) -> None:
        self._tables[table][key] = value

    async def delete(self, table: str, key: bytes) -> None:
        self._tables[table].pop(key, None)

    async def load(self, table: str) -> dict[bytes, bytes]:
        return dict(self._tables[table])

    async def close(self) -> None:
        self._tables.clear()


class RedisStorage:
    """Tables as Redis hashes ``cellfleet:<cluster>:<table>`` in a real redis-server."""

    def __init__(self, url: str, cluster: str) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(url)
        self._prefix = f"cellfleet:{cluster}:"

    async def check(self) -> None:
        """Fail early, with the address, when the server is not there."""
        try:
            await self._redis.ping()
        except Exception as exc:
            raise ConnectionError(f"cannot reach the GCS's Redis server: {exc}") from None

    async def put(self, table: str, key: bytes, value: bytes) -> None:
        await self._redis.hset(self._prefix + table, key, value)

    async def delete(self, table: str, key: bytes) -> None:
        await self._redis.hdel(self._prefix + table, key)

    async def load(self, table: str) -> dict[bytes, bytes]:
        return await self._redis.hgetall(self._prefix + table)

    async def close(self) -> None:
        await self._redis.aclose()


async def open_storage(spec: str | None, cluster: str) -> MemoryStorage | RedisStorage:
    """``None`` or ``"memory"`` for in-memory tables; ``redis://host:port[/db]`` for Redis."""
    if spec in (None, "", "memory"):
        return MemoryStorage()
    if urlparse(spec).scheme in ("redis", "rediss", "unix"):
        storage = RedisStorage(spec, cluster)
        await storage.check()
        return storage
    raise ValueError(
        f"gcs_storage={spec!r} is not understood: use None (in memory) or 'redis://host:port'"
    )
