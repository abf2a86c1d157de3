"""``GET /v1/models``: the models this deployment serves, with their queues and live workers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from ..context import Context
from ..openapi import errors

__all__ = ["router"]

router = APIRouter()


@router.get("/v1/models", summary="The models this deployment serves", responses=errors())
async def list_models(ctx: Context) -> dict[str, Any]:
    service = ctx.service

    def describe() -> list[dict[str, Any]]:
        out = []
        for name in service.registry.names():
            info = service.registry.get(name).describe()
            workers = service.workers_serving(name)
            info.update(queued=service.queued_count(name), workers=workers, loaded=workers > 0)
            out.append(info)
        return out

    return {"models": await run_in_threadpool(describe)}
