"""The HTTP API (FastAPI): submit, status, results, models, health.

The API never loads a model: it validates against the registry's specs,
enqueues through the same ``Client`` a Python producer uses, and reads job
records from RQ.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response

from .. import __version__, metrics
from ..config import Settings
from ..errors import InvalidRequest, JobConflict, JobNotFound, LatentqError, LatentTooLarge, QueueFull, StoreError
from ..producer.client import Client
from ..spec import DecodeRequest
from ..store import LocalStore, ObjectStore, check_key, open_store
from ..wire import latent_from_bytes

__all__ = ["create_app", "MAX_WAIT_S"]

MAX_WAIT_S = 300.0  # longest synchronous wait one request may ask for


def _error(status: int, kind: str, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"type": kind, "message": message, "field": field}, "detail": message}
    return JSONResponse(body, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
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


def create_app(
    settings: Settings | None = None, *, client: Client | None = None, store: ObjectStore | None = None
) -> FastAPI:
    settings = settings or Settings.from_env()
    store = store or open_store(settings.store, public_url=settings.public_url)
    client = client or Client(settings=settings, store=store)
    app = FastAPI(
        title="latentq",
        version=__version__,
        description="Queued, batched VAE decoding for latent diffusion models.",
    )
    app.state.client = client
    app.state.store = store

    @app.exception_handler(LatentqError)
    async def latentq_error(_: Request, exc: LatentqError) -> JSONResponse:
        if isinstance(exc, InvalidRequest):
            return _error(exc.status_code, type(exc).__name__, str(exc), exc.field)
        if isinstance(exc, QueueFull):
            return _error(429, "QueueFull", str(exc), headers={"Retry-After": str(exc.retry_after)})
        if isinstance(exc, JobNotFound):
            return _error(404, "JobNotFound", str(exc), "id")
        if isinstance(exc, JobConflict):
            return _error(409, "JobConflict", str(exc), "id")
        if isinstance(exc, StoreError):
            return _error(404, "StoreError", str(exc), "key")
        return _error(500, type(exc).__name__, str(exc))

    def url_for_result(request: Request, key: str) -> str:
        if store.served_by_api:
            return str(request.url_for("get_result", key=key))
        return store.url(key)

    def job_body(request: Request, job_id: str, wait: float = 0.0) -> dict[str, Any]:
        info = client.wait_for(job_id, wait) if wait > 0 else client.job_info(job_id)
        body = info.to_dict()
        for item in body["results"] + ([body["preview"]] if body.get("preview") else []):
            item["url"] = url_for_result(request, item["key"])
        body["status_url"] = str(request.url_for("get_job", job_id=job_id))
        return body

    @app.post("/v1/jobs", status_code=202, summary="Submit one latent (a one-tensor safetensors body)")
    async def submit_job(
        request: Request,
        model: Annotated[str, Query(description="model name, see GET /v1/models")],
        output_format: Annotated[str, Query(description="png, jpeg, webp, tensor or uint8")] = "png",
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        quality: Annotated[int, Query(ge=1, le=100)] = 90,
        metadata: Annotated[str | None, Query(description="a JSON object kept with the job")] = None,
        height: Annotated[int | None, Query(description="image height, for packed (FLUX) latents")] = None,
        width: Annotated[int | None, Query(description="image width, for packed (FLUX) latents")] = None,
        fps: Annotated[int, Query(ge=1, le=240, description="mp4 frame rate")] = 24,
        preview: Annotated[bool, Query(description="publish a tiny-autoencoder preview first")] = False,
        tile: Annotated[bool | None, Query(description="force tiled decode on or off (default: by size)")] = None,
        priority: Annotated[str, Query(description="normal or high")] = "normal",
        deadline: Annotated[float | None, Query(description="unix time; not started by then -> expired")] = None,
        callback_url: Annotated[str | None, Query(description="webhook URL for the job's final status")] = None,
    ) -> JSONResponse:
        try:
            meta = json.loads(metadata) if metadata else {}
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"metadata is not valid JSON: {exc}", field="metadata") from exc
        client.registry.get(model)  # unknown model: 404 before reading the body
        decode_request = DecodeRequest(
            model=model,
            output_format=output_format,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            quality=quality,
            metadata=meta,
            height=height,
            width=width,
            fps=fps,
            preview=preview,
            tile=tile,
            priority=priority,
            deadline=deadline,
            callback_url=callback_url,
        )
        body = await _read_body(request, settings.limits.max_body_bytes)
        latent = latent_from_bytes(body, settings.limits)
        job = await run_in_threadpool(client.submit_request, latent, decode_request)
        status_url = str(request.url_for("get_job", job_id=job.id))
        return JSONResponse(
            {"id": job.id, "model": model, "status": "queued", "status_url": status_url},
            status_code=202,
            headers={"Location": status_url},
        )

    @app.get("/v1/jobs/{job_id}", name="get_job", summary="A job's status and, when finished, its result URLs")
    async def get_job(
        request: Request,
        job_id: str,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to wait for the job to end")] = 0,
    ) -> dict[str, Any]:
        return await run_in_threadpool(job_body, request, job_id, wait)

    @app.delete("/v1/jobs/{job_id}", summary="Cancel a job that has not started (409 once started or ended)")
    async def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
        await run_in_threadpool(client.cancel, job_id)
        return await run_in_threadpool(job_body, request, job_id)

    @app.get("/v1/batches/{batch_id}", summary="Counts per status and every job of a submit_many batch")
    async def get_batch(request: Request, batch_id: str) -> dict[str, Any]:
        body = await run_in_threadpool(client.batch_info, batch_id, lambda key: url_for_result(request, key))
        for job in body["jobs"]:
            job["status_url"] = str(request.url_for("get_job", job_id=job["id"]))
        return body

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def get_metrics() -> PlainTextResponse:
        def render() -> str:
            names = client.registry.names()
            depth = {name: client.queued_count(name) for name in names}
            workers = {name: client.workers_serving(name) for name in names}
            return metrics.render(client.connection, names, depth, workers)

        text = await run_in_threadpool(render)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/v1/results/{key:path}", name="get_result", summary="A stored result object")
    async def get_result(key: str) -> Response:
        check_key(key)
        if isinstance(store, LocalStore):
            path = store.path(key)
            if not path.is_file():
                raise StoreError(f"no result object {key!r}")
            return FileResponse(path, headers={"Cache-Control": "private, max-age=86400, immutable"})
        return RedirectResponse(store.url(key), status_code=307)

    @app.get("/v1/models", summary="The models this deployment serves")
    async def list_models() -> dict[str, Any]:
        def describe() -> list[dict[str, Any]]:
            out = []
            for name in client.registry.names():
                info = client.registry.get(name).describe()
                workers = client.workers_serving(name)
                info.update(queued=client.queued_count(name), workers=workers, loaded=workers > 0)
                out.append(info)
            return out

        return {"models": await run_in_threadpool(describe)}

    @app.get("/healthz", summary="Liveness: the API runs and reaches Redis")
    async def healthz() -> JSONResponse:
        try:
            await run_in_threadpool(client.connection.ping)
        except Exception as exc:
            return JSONResponse({"status": "error", "redis": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok", "redis": "ok", "version": __version__})

    from .batches import install_batch_routes; install_batch_routes(app, client, settings)  # noqa: E702, I001
    from .remote import install_remote_routes; install_remote_routes(app, client, settings)  # noqa: E702, I001
    return app
