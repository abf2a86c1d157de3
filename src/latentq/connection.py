"""Redis connections from one URL, Redis Sentinel included.

``redis://`` and ``rediss://`` URLs go to redis-py as they are. For failover,
``redis+sentinel://[:password@]host1:26379,host2:26379/<master-name>[/<db>]``
asks the sentinels for the current master on every reconnect, so workers and
the API follow a failover without a restart.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from redis import Redis
from redis.sentinel import Sentinel

from .errors import ConfigError

__all__ = ["redis_from_url", "SENTINEL_SCHEME"]

SENTINEL_SCHEME = "redis+sentinel"


def redis_from_url(url: str) -> Redis:
    if not url.startswith(SENTINEL_SCHEME + "://"):
        return Redis.from_url(url)
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
    sentinel = Sentinel(hosts, socket_timeout=5, password=password, sentinel_kwargs={"password": password})
    return sentinel.master_for(path[0], db=db, password=password, socket_timeout=30)
