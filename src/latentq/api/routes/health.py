"""``GET /healthz`` (liveness: the API runs and reaches Redis) and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ... import __version__
from ...state import metrics
from ..context import Context
from ..openapi import errors

__all__ = ["router"]

router = APIRouter()


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse, responses=errors())
async def get_metrics(ctx: Context) -> PlainTextResponse:
    service = ctx.service

    def render() -> str:
        names = service.registry.names()
        depth = {name: service.queued_count(name) for name in names}
        workers = {name: service.workers_serving(name) for name in names}
        return metrics.render(service.connection, names, depth, workers)

    text = await run_in_threadpool(render)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


@router.get("/healthz", summary="Liveness: the API runs and reaches Redis", responses=errors())
async def healthz(ctx: Context) -> JSONResponse:
    long_polls = ctx.long_polls
    try:
        await long_polls.ping()  # async: answers at once however many threads are busy
    except (RedisConnectionError, RedisTimeoutError) as exc:
        message = f"Redis is unreachable: {exc}"
        body = {"status": "error", "redis": str(exc),
                "error": {"type": "Unavailable", "message": message, "field": None}, "detail": message}  # fmt: skip
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
    return JSONResponse({"status": "ok", "redis": "ok", "version": __version__, "waiting": long_polls.waiting})
