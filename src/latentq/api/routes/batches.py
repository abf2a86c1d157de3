"""``/v1/batches``: one safetensors tensor of shape (B, ...) in, one job per sample out; a batch's status.

The HTTP twin of ``Client.submit_many``: the jobs share a batch id, so one ``GET /v1/batches/{id}``
reports them all. A video model with sound (LTX-2) takes a two-tensor body as ``POST /v1/jobs`` does:
``latent`` (B, ...) and ``audio_latents`` (B, ...), sample i's sound the audio's i-th.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ...core.request import DecodeRequest
from ...errors import InvalidLatent
from ..auth import check_owner, request_tenant
from ..context import Context
from ..openapi import errors
from ..params import BatchId, IdempotencyKey, decode_params, read_latents

__all__ = ["router"]

_SAFETENSORS_BODY = {"requestBody": {"required": True, "description": "a safetensors file: one tensor of shape (B, ...), "
                                                                     "or latent (B, ...) and audio_latents (B, ...)",
                                     "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                         "format": "binary"}}}}}  # fmt: skip

router = APIRouter()


@router.post("/v1/batches", status_code=202, summary="Submit a batch: one tensor (B, ...) (or latent + audio_latents), one job per sample",
             responses=errors(404, 408, 413, 429), openapi_extra=_SAFETENSORS_BODY)  # fmt: skip
async def submit_batch(
    request: Request, decode_request: Annotated[DecodeRequest, Depends(decode_params)], ctx: Context,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    batch, audio = await read_latents(request, decode_request, ctx.service.registry, ctx.settings.limits)
    if batch.ndim < 2:
        raise InvalidLatent(f"a batch needs shape (B, ...), got {tuple(batch.shape)}", field="body")
    if audio is not None and (audio.ndim < 2 or audio.shape[0] != batch.shape[0]):
        raise InvalidLatent(f"audio_latents must be (B, ...) with the latent's B = {batch.shape[0]} (one per "
                            f"sample), got {tuple(audio.shape)}", field="audio_latents")  # fmt: skip
    jobs = await run_in_threadpool(ctx.service.submit_many, batch, decode_request, tenant=request_tenant(request),
                                   idempotency_key=idempotency_key, audio_latents=audio)  # fmt: skip
    batch_id = jobs[0].batch_id
    batch_url = str(request.url_for("get_batch", batch_id=batch_id))
    return JSONResponse(
        {
            "id": batch_id,
            "model": decode_request.model,
            "status": "queued",
            "total": len(jobs),
            "job_ids": [job.id for job in jobs],
            "jobs": [{"id": job.id, "status_url": str(request.url_for("get_job", job_id=job.id))} for job in jobs],
            "batch_url": batch_url,
        },
        status_code=202,
        headers={"Location": batch_url},
    )


@router.get("/v1/batches/{batch_id}", summary="Counts per status and every job of a submit_many batch",
            responses=errors(404))  # fmt: skip
async def get_batch(request: Request, batch_id: BatchId, ctx: Context) -> dict[str, Any]:
    body = await run_in_threadpool(ctx.service.batch_info, batch_id, ctx.url_for(request))
    check_owner(request, body["jobs"][0]["tenant"] if body["jobs"] else None, f"batch {batch_id!r}")
    for job in body["jobs"]:
        job["status_url"] = str(request.url_for("get_job", job_id=job["id"]))
    return body
