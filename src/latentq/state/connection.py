"""Redis connections from one URL, Redis Sentinel included, from a bounded, reused pool.

``redis://`` and ``rediss://`` URLs go to redis-py as they are. For failover,
``redis+sentinel://[:password@]host1:26379,host2:26379/<master-name>[/<db>]``
asks the sentinels for the current master on every reconnect, so workers and
the API follow a failover without a restart.

Every client gets a *blocking* pool of at most ``max_connections``: a burst of
callers waits up to ``pool_timeout`` for a free connection instead of opening
more (or failing at once), so a process never holds more than its bound.
Transient errors are retried a couple of times with a short backoff; an outage
surfaces quickly as ``Unavailable`` through :func:`redis_unavailable`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import Redis
from redis import asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool as AsyncBlockingConnectionPool
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import BlockingConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from ..errors import ConfigError, Unavailable

__all__ = [
    "MAX_CONNECTIONS",
    "REDIS_DOWN",
    "SENTINEL_SCHEME",
    "async_redis_from_url",
    "redis_from_url",
    "redis_unavailable",
]

SENTINEL_SCHEME = "redis+sentinel"
MAX_CONNECTIONS = 64  # per client: above the API's 40 threads plus its listener
POOL_TIMEOUT_S = 10.0  # how long a caller waits for a free pooled connection
SOCKET_TIMEOUT_S = 30.0  # a reply (RQ raises it for a worker's blocking pop)
CONNECT_TIMEOUT_S = 3.0
HEALTH_CHECK_S = 30  # an idle pooled connection is PINGed before reuse
RETRIES = 2  # a blink is retried; an outage fails within a fraction of a second
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)  # what "Redis is unreachable" looks like


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(base=0.05, cap=0.5)


def _options(max_connections: int, pool_timeout: float) -> dict[str, Any]:
    return {
        "max_connections": max_connections,
        "timeout": pool_timeout,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_S,
    }


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The sentinel's master lookup with the blocking pool's bound."""


class _AsyncBlockingSentinelPool(AsyncSentinelConnectionPool, AsyncBlockingConnectionPool):
    """The asyncio twin of ``_BlockingSentinelPool``."""


def _sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    parts = urlsplit(url)
    hosts = []
    for item in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"sentinel address {item!r} in {url!r} is not host:port")
        hosts.append((host, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ConfigError(f"{url!r} names no master: use redis+sentinel://host:port/<master-name>[/<db>]")
    db = int(path[1]) if len(path) > 1 else 0
    password = unquote(parts.password) if parts.password else None
    return hosts, path[0], db, password


def redis_from_url(url: str, *, max_connections: int = MAX_CONNECTIONS, pool_timeout: float = POOL_TIMEOUT_S) -> Redis:
    """A client whose pool holds at most ``max_connections`` connections, reused."""
    options = _options(max_connections, pool_timeout)
    retry = Retry(_backoff(), RETRIES)
    if not url.startswith(SENTINEL_SCHEME + "://"):
        pool = BlockingConnectionPool.from_url(url, retry=retry, **options)
        return Redis.from_pool(pool)  # closing the client closes its pool
    hosts, master, db, password = _sentinel_parts(url)
    sentinel = Sentinel(hosts, socket_timeout=5, password=password, sentinel_kwargs={"password": password})
    return sentinel.master_for(master, connection_pool_class=_BlockingSentinelPool, db=db, password=password,
                               retry=retry, **options)  # fmt: skip


def async_redis_from_url(
    url: str, *, max_connections: int = MAX_CONNECTIONS, pool_timeout: float = POOL_TIMEOUT_S
) -> aioredis.Redis:
    """The asyncio twin of :func:`redis_from_url` (the API's reads that must not hold a thread)."""
    options = _options(max_connections, pool_timeout)
    retry = AsyncRetry(_backoff(), RETRIES)
    if not url.startswith(SENTINEL_SCHEME + "://"):
        pool = AsyncBlockingConnectionPool.from_url(url, retry=retry, **options)
        return aioredis.Redis.from_pool(pool)
    hosts, master, db, password = _sentinel_parts(url)
    sentinel = AsyncSentinel(hosts, socket_timeout=5, password=password, sentinel_kwargs={"password": password})
    return sentinel.master_for(master, connection_pool_class=_AsyncBlockingSentinelPool, db=db, password=password,
                               retry=retry, **options)  # fmt: skip


@contextmanager
def redis_unavailable(what: str = "Redis") -> Iterator[None]:
    """Turn "Redis cannot be reached" (refused, reset, timed out, pool exhausted) into ``Unavailable``.

    Also a decorator (``@redis_unavailable()``), for a public method's whole body.
    """
    try:
        yield
    except REDIS_DOWN as exc:
        raise Unavailable(f"{what} is unreachable ({type(exc).__name__}: {exc}); retry shortly") from exc
