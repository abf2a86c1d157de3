"""API keys and tenants: ``Authorization: Bearer <key>`` on every route but ``/healthz`` and the pages.

Each request's key is looked up in Redis (``latentq keys``; a revoked key is
refused on its next request) and in ``LATENTQ_API_KEYS``; the tenant it
belongs to goes in ``request.state.tenant``, and the routes show a tenant
only its own jobs, batches and results (another tenant's id reads as 404,
as an id that never existed does). With no key configured anywhere,
authentication is off: every request is the ``default`` tenant's and
``request.state.scoped`` is False (no ownership checks).

The pages (the console, the API docs, the schema and their static files)
hold no data: the console asks for a key and sends it with each API call it
makes. A signed result URL (``?expires=...&sig=...``) carries its own
authorisation, which the result route checks.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import JobNotFound
from ..state.tenants import DEFAULT_TENANT, Tenant, TenantDirectory

__all__ = ["OPEN_PATHS", "OPEN_PREFIXES", "check_owner", "install_tenants", "request_tenant"]

OPEN_PATHS = frozenset({"/healthz", "/", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
# What a browser loads before it can send a key: the console's files and the docs' assets (public code).
OPEN_PREFIXES = ("/console/", "/docs-assets/")
SIGNED_PREFIX = "/v1/results/"


def _refuse(status: int, kind: str, message: str, headers: dict[str, str]) -> JSONResponse:
    body = {"error": {"type": kind, "message": message, "field": "authorization" if status == 401 else None},
            "detail": message}  # fmt: skip
    return JSONResponse(body, status_code=status, headers=headers)


def request_tenant(request: Request) -> Tenant:
    """The tenant a request acts for (the default tenant where authentication is off)."""
    return getattr(request.state, "tenant", None) or Tenant(DEFAULT_TENANT)


def check_owner(request: Request, owner: str | None, what: str) -> None:
    """A job or batch of another tenant reads as missing: 404, never 403 (ids are not confirmed)."""
    if not getattr(request.state, "scoped", False):
        return
    if (owner or DEFAULT_TENANT) != request_tenant(request).name:
        raise JobNotFound(f"no {what}")


def install_tenants(app: FastAPI, directory: TenantDirectory) -> None:
    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        path = request.url.path
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return await call_next(request)
        if path.startswith(SIGNED_PREFIX) and "sig" in request.query_params:
            request.state.signed = True  # the result route checks the signature and its expiry
            return await call_next(request)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        presented = token.strip() if scheme.lower() == "bearer" else ""
        try:
            tenant, scoped = await run_in_threadpool(directory.authenticate, presented)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            return _refuse(503, "Unavailable", f"Redis is unreachable: {exc}", {"Retry-After": "2"})
        if tenant is None:
            message = "missing API key" if not presented else "invalid API key"
            return _refuse(401, "Unauthorized", f"{message}: send Authorization: Bearer <key>",
                           {"WWW-Authenticate": "Bearer"})  # fmt: skip
        request.state.tenant = tenant
        request.state.scoped = scoped
        return await call_next(request)
