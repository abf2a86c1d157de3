"""``POST /v1/batches``: one safetensors tensor of shape (B, ...) in, one job per sample out.

The HTTP twin of ``Client.submit_many``: the jobs share a batch id, so one
``GET /v1/batches/{id}`` reports them all. Installed by ``create_app``.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ..config import Settings
from ..errors import InvalidLatent, InvalidRequest, LatentTooLarge
from ..producer.client import Client
from ..wire import latent_from_bytes

__all__ = ["install_batch_routes"]


async def _read_body(request: Request, limit: int) -> bytes:
    # The same streaming limit as POST /v1/jobs: an oversized body is refused before it is all read.
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise LatentTooLarge(f"body is {declared} bytes, over the limit of {limit}", field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise LatentTooLarge(f"body is over the limit of {limit} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def install_batch_routes(app: FastAPI, client: Client, settings: Settings) -> None:
    @app.post("/v1/batches", status_code=202, summary="Submit a batch: one tensor (B, ...), one job per sample")
    async def submit_batch(
        request: Request,
        model: Annotated[str, Query(description="model name, see GET /v1/models")],
        output_format: Annotated[str, Query(description="png, jpeg, webp, tensor or uint8")] = "png",
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        quality: Annotated[int, Query(ge=1, le=100)] = 90,
        metadata: Annotated[str | None, Query(description="a JSON object kept with every job")] = None,
        height: Annotated[int | None, Query(description="image height, for packed (FLUX) latents")] = None,
        width: Annotated[int | None, Query(description="image width, for packed (FLUX) latents")] = None,
        fps: Annotated[int, Query(ge=1, le=240, description="mp4 frame rate")] = 24,
        preview: Annotated[bool, Query(description="publish a tiny-autoencoder preview first")] = False,
        tile: Annotated[bool | None, Query(description="force tiled decode on or off (default: by size)")] = None,
        priority: Annotated[str, Query(description="normal or high")] = "normal",
        deadline: Annotated[float | None, Query(description="unix time; not started by then -> expired")] = None,
        callback_url: Annotated[str | None, Query(description="webhook URL for each job's final status")] = None,
    ) -> JSONResponse:
        try:
            meta = json.loads(metadata) if metadata else {}
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"metadata is not valid JSON: {exc}", field="metadata") from exc
        client.registry.get(model)  # unknown model: 404 before reading the body
        body = await _read_body(request, settings.limits.max_body_bytes)
        batch = latent_from_bytes(body, settings.limits)
        if batch.ndim < 2:
            raise InvalidLatent(f"a batch needs shape (B, ...), got {tuple(batch.shape)}", field="body")
        options = dict(quality=quality, height=height, width=width, fps=fps, preview=preview, tile=tile,
                       priority=priority, deadline=deadline, callback_url=callback_url)  # fmt: skip
        jobs = await run_in_threadpool(
            client.submit_many, batch, model, output_format, scaling_factor, shift_factor, meta, **options
        )
        batch_id = jobs[0].batch_id
        batch_url = str(request.url_for("get_batch", batch_id=batch_id))
        return JSONResponse(
            {
                "id": batch_id,
                "model": model,
                "status": "queued",
                "total": len(jobs),
                "job_ids": [job.id for job in jobs],
                "jobs": [{"id": job.id, "status_url": str(request.url_for("get_job", job_id=job.id))} for job in jobs],
                "batch_url": batch_url,
            },
            status_code=202,
            headers={"Location": batch_url},
        )
