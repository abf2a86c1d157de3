"""Tenants and their API keys: who owns a job, and the limits that keep one user from crowding out others.

A tenant is a name with limits (queued jobs, submits per second). Its API
keys live in Redis, stored only as SHA-256 digests (a leaked Redis dump
holds no usable key), and are managed with ``latentq keys create / list /
revoke``; a revoked key is refused on its next request. Keys listed in
``LATENTQ_API_KEYS`` still work, for bootstrapping: ``tenant:key`` puts a
key in a named tenant, a bare key is a tenant of its own
(``key-<first 8 hex digits of its digest>``).

With no key configured anywhere, authentication is off and every job
belongs to the ``default`` tenant; a Python ``Client`` talks to Redis
directly (it is trusted) and submits as ``default`` unless given a tenant.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from redis import Redis

from ..errors import InvalidRequest
from . import keys

__all__ = [
    "DEFAULT_TENANT",
    "ApiKey",
    "Tenant",
    "TenantDirectory",
    "digest",
    "env_key_tenants",
    "parse_rate",
]

DEFAULT_TENANT = "default"
KEY_PREFIX = "lq_"  # every key latentq makes starts so, which makes leaked keys easy to scan for
TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def digest(key: str) -> str:
    """The SHA-256 of an API key: what Redis stores, and what a lookup compares."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_rate(text: str | float | None) -> float:
    """``"5"``, ``"5/s"``, ``"300/min"`` -> submits per second (0: no limit)."""
    if text is None or text == "":
        return 0.0
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        number, _, unit = str(text).strip().partition("/")
        per = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}.get(unit.strip().lower())
        try:
            value = float(number)
        except ValueError:
            per = None
        if per is None:
            raise InvalidRequest(f"rate must look like 5/s or 300/min, got {text!r}", field="rate")
        value /= per
    if value < 0 or value != value:
        raise InvalidRequest(f"rate must be >= 0, got {text!r}", field="rate")
    return value


@dataclass(frozen=True)
class Tenant:
    """Who submitted a job, and the limits their submits get (0: none beyond the model's)."""

    name: str = DEFAULT_TENANT
    max_queued: int = 0
    rate: float = 0.0  # submits per second (a batch is one submit)

    @property
    def burst(self) -> float:
        """Submits allowed at once after an idle spell: one second's worth, at least one."""
        return max(1.0, self.rate)


@dataclass(frozen=True)
class ApiKey:
    """A stored key, as ``latentq keys list`` shows it (never the key itself)."""

    tenant: str
    prefix: str  # the key's first characters, to tell keys apart
    digest: str
    created: float


def env_key_tenants(entries: tuple[str, ...]) -> dict[str, str]:
    """``LATENTQ_API_KEYS`` entries -> {key: tenant}."""
    out: dict[str, str] = {}
    for entry in entries:
        tenant, sep, key = entry.partition(":")
        if sep and TENANT_NAME.match(tenant) and key:
            out[key] = tenant
        else:
            out[entry] = "key-" + digest(entry)[:8]
    return out


def _check_name(name: str) -> str:
    if not TENANT_NAME.match(name or ""):
        raise InvalidRequest(
            f"tenant name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            field="name",
        )
    return name


class TenantDirectory:
    """Keys and tenants in Redis, plus the bootstrapping keys of ``LATENTQ_API_KEYS``."""

    def __init__(self, connection: Redis, env_keys: tuple[str, ...] = ()) -> None:
        self.connection = connection
        self._env = [(key.encode(), tenant) for key, tenant in env_key_tenants(env_keys).items()]

    # --- requests ------------------------------------------------------------------------------
    def authenticate(self, presented: str | None) -> tuple[Tenant | None, bool]:
        """``(tenant, scoped)`` for a presented key: its tenant and True; ``(Tenant(), False)`` when no key
        exists anywhere (authentication is off); ``(None, True)``: refused."""
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hget(keys.API_KEYS, digest(presented or ""))
            pipe.hlen(keys.API_KEYS)
            record, stored = pipe.execute()
        if record is not None and presented:
            return self.tenant(json.loads(record)["tenant"]), True
        if presented:
            candidate, matched = presented.encode(), None
            for key, tenant in self._env:  # no early exit: the same work whichever key (if any) matches
                if hmac.compare_digest(candidate, key):
                    matched = tenant
            if matched is not None:
                return self.tenant(matched), True
        if not self._env and not stored:
            return Tenant(), False
        return None, True

    def auth_enabled(self) -> bool:
        return bool(self._env) or bool(self.connection.hlen(keys.API_KEYS))

    def tenant(self, name: str) -> Tenant:
        """A tenant and its limits (a tenant nobody configured has none)."""
        raw = self.connection.hget(keys.TENANTS, name)
        if raw is None:
            return Tenant(name=name)
        data = json.loads(raw)
        return Tenant(name=name, max_queued=int(data.get("max_queued") or 0), rate=float(data.get("rate") or 0))

    # --- management (latentq keys ...) -------------------------------------------------------------
    def create_key(self, tenant: str, *, max_queued: int | None = None, rate: float | None = None) -> str:
        """A new key for ``tenant`` (made if new; limits updated when given). The key is shown only now."""
        _check_name(tenant)
        if max_queued is not None and max_queued < 0:
            raise InvalidRequest("max_queued must be >= 0", field="max_queued")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        current = self.connection.hget(keys.TENANTS, tenant)
        limits: dict[str, Any] = json.loads(current) if current else {"max_queued": 0, "rate": 0.0, "created": now}
        if max_queued is not None:
            limits["max_queued"] = int(max_queued)
        if rate is not None:
            limits["rate"] = float(rate)
        record = asdict(ApiKey(tenant=tenant, prefix=key[: len(KEY_PREFIX) + 6], digest=digest(key), created=now))
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.hset(keys.TENANTS, tenant, json.dumps(limits))
            pipe.hset(keys.API_KEYS, record["digest"], json.dumps(record))
            pipe.execute()
        return key

    def keys(self) -> list[ApiKey]:
        stored = self.connection.hgetall(keys.API_KEYS)
        found = [ApiKey(**json.loads(value)) for value in stored.values()]
        return sorted(found, key=lambda k: (k.tenant, k.created))

    def tenants(self) -> dict[str, Tenant]:
        return {name.decode(): self.tenant(name.decode()) for name in self.connection.hkeys(keys.TENANTS)}

    def revoke(self, what: str) -> list[ApiKey]:
        """Revoke a key (the key itself, or the prefix ``keys list`` shows) or every key of a tenant."""
        if not what:
            raise InvalidRequest("give a key, a key prefix or a tenant name", field="key")
        doomed = [k for k in self.keys() if k.digest == digest(what) or k.prefix == what or k.tenant == what]
        if doomed:
            self.connection.hdel(keys.API_KEYS, *[k.digest for k in doomed])
        return doomed
