"""Every failure in latentq's error body: ``{"error": {"type", "message", "field"}, "detail"}``.

latentq's exceptions answer as ``latentq.errors.HTTP_ERRORS`` says (one table: status, type, field,
Retry-After); FastAPI's own checks, Starlette's own answers and a Redis outage are shaped here too.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import LatentqError, http_error
from .openapi import error_response

__all__ = ["install_error_handlers"]


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own checks (types, ranges) in latentq's error shape, naming the field and the limit.
    first = exc.errors()[0] if exc.errors() else {}
    field = str(first.get("loc", ["", "?"])[-1])
    return error_response(422, "InvalidRequest", f"{field}: {first.get('msg', 'invalid value')}", field)


async def latentq_error(_: Request, exc: LatentqError) -> JSONResponse:
    status, kind, field, headers = http_error(exc)
    return error_response(status, kind, str(exc), field, headers)


async def http_exception(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Starlette's own answers (no such route, method not allowed) in latentq's error shape too.
    kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
    return error_response(exc.status_code, kind, str(exc.detail), headers=getattr(exc, "headers", None))


async def redis_unreachable(_: Request, exc: Exception) -> JSONResponse:
    # Redis blinked (restart, failover, network): a retryable 503, never a 500.
    return error_response(503, "Unavailable", "Redis is unreachable; retry shortly", headers={"Retry-After": "2"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(LatentqError, latentq_error)
    app.add_exception_handler(StarletteHTTPException, http_exception)
    app.add_exception_handler(RedisConnectionError, redis_unreachable)
    app.add_exception_handler(RedisTimeoutError, redis_unreachable)
