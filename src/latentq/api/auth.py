"""Optional API keys: ``Authorization: Bearer <key>`` on every route but ``/healthz`` and the pages.

The pages (the console, the API docs, the schema and their static files) hold no data: the console
asks for a key and sends it with each API call it makes.

Keys come from ``LATENTQ_API_KEYS`` (comma-separated, so keys can be rotated
by listing old and new together). Every configured key is compared in
constant time, so a response's timing does not reveal how much of a guess
was right.
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

__all__ = ["install_api_keys", "OPEN_PATHS"]

OPEN_PATHS = frozenset({"/healthz", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
# What a browser loads before it can send a key: the console's files and the docs' assets (public code).
OPEN_PREFIXES = ("/console/", "/docs-assets/")


def _valid(presented: str, keys: tuple[bytes, ...]) -> bool:
    candidate = presented.encode()
    matched = False
    for key in keys:  # no early exit: the same work whichever key (if any) matches
        matched |= hmac.compare_digest(candidate, key)
    return matched


def install_api_keys(app: FastAPI, api_keys: tuple[str, ...]) -> None:
    keys = tuple(key.encode() for key in api_keys)

    @app.middleware("http")
    async def require_api_key(request: Request, call_next):
        if request.url.path in OPEN_PATHS or request.url.path.startswith(OPEN_PREFIXES):
            return await call_next(request)
        if request.url.path.startswith("/v1/results/") and "sig" in request.query_params:
            return await call_next(request)  # a signed result URL: the result route checks its signature
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token or not _valid(token.strip(), keys):
            message = "missing API key" if not token else "invalid API key"
            body = {"error": {"type": "Unauthorized", "message": f"{message}: send Authorization: Bearer <key>",
                              "field": "authorization"}, "detail": message}  # fmt: skip
            return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)
