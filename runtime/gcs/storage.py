"""Where the GCS keeps the tables it needs to recover: in memory, or in a Redis server.

Tables are named maps from bytes to bytes. The GCS writes every change through to storage
and, with Redis, reloads all tables when it starts, so a restarted GCS finds the cluster as it
was. Task events are not stored here: they are bounded, in-memory observability data.

Redis is a second way into the cluster, so it is held to the token's standard:

- the server must demand a password (``requirepass`` or an ACL user): a Redis that answers an
  unauthenticated client is refused, and the password comes from the URL
  (``redis://[user]:password@host:port``), a file (``?password_file=PATH`` or
  ``CELLFLEET_REDIS_PASSWORD_FILE``), never from the GCS's command line;
- every record carries an HMAC-SHA256 under a key derived from the cluster token, bound to its
  cluster, table and key (``RecordSealer``): a record written by anyone without the token is
  refused on reload and logged, never unpacked or unpickled;
- a cluster that ends cleanly deletes its keys (``destroy``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Protocol
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

__all__ = [
    "MemoryStorage",
    "RecordSealer",
    "RedisStorage",
    "Storage",
    "open_storage",
    "redact_url",
    "resolve_redis_url",
]

logger = logging.getLogger(__name__)

TABLES = ("nodes", "jobs", "functions", "kv", "actors", "placement_groups")
PASSWORD_FILE_ENV = "CELLFLEET_REDIS_PASSWORD_FILE"
MAC_SIZE = 32

_HOW_TO_SET_A_PASSWORD = (
    "Give it a password (redis-server --requirepass PASSWORD, 'requirepass' in redis.conf, or an "
    "ACL user) and pass it as redis://:PASSWORD@host:port, redis://USER:PASSWORD@host:port, "
    f"redis://host:port?password_file=PATH or {PASSWORD_FILE_ENV}=PATH"
)


class Storage(Protocol):
    """The interface both backends implement."""

    async def put(self, table: str, key: bytes, value: bytes) -> None: ...
    async def delete(self, table: str, key: bytes) -> None: ...
    async def load(self, table: str) -> dict[bytes, bytes]: ...
    async def destroy(self) -> None: ...
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

    async def destroy(self) -> None:
        self._tables.clear()

    async def close(self) -> None:
        self._tables.clear()


class RecordSealer:
    """Seals records with an HMAC under the cluster token and opens only intact ones (no I/O).

    A sealed record is ``mac || value`` where ``mac = HMAC-SHA256(k, cluster, table, key,
    value)`` and ``k`` is derived from the token, so a record cannot be forged, altered, or
    moved to another key, table or cluster without the token.
    """

    def __init__(self, token: bytes, cluster: str) -> None:
        self._key = hmac.digest(token, b"cellfleet gcs storage", "sha256")
        self._cluster = cluster.encode()

    def _mac(self, table: str, key: bytes, value: bytes) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (self._cluster, table.encode(), key):
            mac.update(len(part).to_bytes(4, "big"))
            mac.update(part)
        mac.update(value)
        return mac.digest()

    def seal(self, table: str, key: bytes, value: bytes) -> bytes:
        return self._mac(table, key, value) + value

    def open(self, table: str, key: bytes, record: bytes) -> bytes | None:
        """The value of an intact record, or None when its MAC does not match."""
        mac, value = record[:MAC_SIZE], record[MAC_SIZE:]
        if len(mac) == MAC_SIZE and hmac.compare_digest(mac, self._mac(table, key, value)):
            return value
        return None


def resolve_redis_url(url: str, environ: dict[str, str] | None = None) -> tuple[str, str | None]:
    """``url`` without ``?password_file=``, and the password read from that file (or from the
    file ``CELLFLEET_REDIS_PASSWORD_FILE`` names), if any."""
    environ = os.environ if environ is None else environ
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    files = [value for name, value in query if name == "password_file"]
    path = files[-1] if files else environ.get(PASSWORD_FILE_ENV, "")
    url = _join(parts, parts.netloc, [(name, value) for name, value in query
                                      if name != "password_file"])
    if not path:
        return url, None
    if parts.password or any(name == "password" for name, _ in query):
        raise ValueError("the Redis URL has a password and a password file: give one of them")
    try:
        password = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the Redis password file {path}: {exc.strerror}") from None
    if not password:
        raise ValueError(f"the Redis password file {path} is empty")
    return url, password


def redact_url(url: str) -> str:
    """``url`` without its credentials, for logs and error messages."""
    parts = urlsplit(url)
    query = [(name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True)
             if name not in ("password", "username")]
    return _join(parts, parts.netloc.rpartition("@")[2], query)


def _join(parts: SplitResult, netloc: str, query: list[tuple[str, str]]) -> str:
    """A URL from its parts (``urlunsplit`` would turn ``unix:///path`` into ``unix:/path``)."""
    tail = f"?{urlencode(query)}" if query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{tail}"


class RedisStorage:
    """Tables as Redis hashes ``cellfleet:<cluster>:<table>``, sealed with the cluster token."""

    def __init__(self, url: str, cluster: str, token: bytes, password: str | None = None) -> None:
        import redis.asyncio as aioredis

        self._url = url
        self._has_password = bool(password or urlsplit(url).password
                                  or "password=" in urlsplit(url).query)
        self._redis = aioredis.Redis.from_url(url, **({"password": password} if password else {}))
        self._prefix = f"cellfleet:{cluster}:"
        self._sealer = RecordSealer(token, cluster)

    async def check(self) -> None:
        """Fail early, saying what to do, when the server is absent, open or refuses us."""
        import redis.asyncio as aioredis
        from redis.exceptions import AuthenticationError, ResponseError

        refused = (AuthenticationError, ResponseError)
        where = redact_url(self._url)
        anonymous = aioredis.Redis.from_url(where)
        try:
            await anonymous.ping()
        except refused:
            pass  # NOAUTH / NOPERM: the server demands a password, as it must
        except Exception as exc:
            raise _unreachable(where, exc) from None
        else:
            raise PermissionError(
                f"the Redis server at {where} answers clients without a password: any local "
                "user could read the cluster's functions and rewrite the tables a restarted GCS "
                f"loads. {_HOW_TO_SET_A_PASSWORD}.")
        finally:
            await anonymous.aclose()
        try:
            await self._redis.ping()
        except refused as exc:  # a wrong password, or none for a server that wants one
            given = "refused the password" if self._has_password else "requires a password"
            raise PermissionError(f"the Redis server at {where} {given} ({exc}). "
                                  f"{_HOW_TO_SET_A_PASSWORD}.") from None
        except Exception as exc:
            raise _unreachable(where, exc) from None

    async def put(self, table: str, key: bytes, value: bytes) -> None:
        await self._redis.hset(self._prefix + table, key, self._sealer.seal(table, key, value))

    async def delete(self, table: str, key: bytes) -> None:
        await self._redis.hdel(self._prefix + table, key)

    async def load(self, table: str) -> dict[bytes, bytes]:
        """The table's intact records; records that fail their MAC are logged and skipped."""
        out = {}
        for key, record in (await self._redis.hgetall(self._prefix + table)).items():
            value = self._sealer.open(table, key, record)
            if value is None:
                logger.error("refused record %r of the %s table in Redis: it was not written "
                             "by this cluster (no valid MAC under the cluster token); someone "
                             "with access to Redis may have altered it", key[:64], table)
                continue
            out[key] = value
        return out

    async def destroy(self) -> None:
        """Delete the cluster's keys (it has ended)."""
        await self._redis.delete(*(self._prefix + table for table in TABLES))

    async def close(self) -> None:
        await self._redis.aclose()


def _unreachable(where: str, exc: Exception) -> ConnectionError:
    return ConnectionError(f"cannot reach the GCS's Redis server at {where}: {exc}")


async def open_storage(spec: str | None, cluster: str,
                       token: bytes) -> MemoryStorage | RedisStorage:
    """``None`` or ``"memory"`` for in-memory tables; ``redis://...`` for Redis (see above)."""
    if spec in (None, "", "memory"):
        return MemoryStorage()
    if urlsplit(spec).scheme in ("redis", "rediss", "unix"):
        url, password = resolve_redis_url(spec)
        storage = RedisStorage(url, cluster, token, password)
        try:
            await storage.check()
        except BaseException:
            await storage.close()
            raise
        return storage
    raise ValueError(
        f"gcs_storage={redact_url(spec)!r} is not understood: use None (in memory) or "
        "'redis://:PASSWORD@host:port'"
    )
