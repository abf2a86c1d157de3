"""The HTTP API (FastAPI): submit, status, results, models, health.

The API never loads a model: it validates against the registry's specs,
enqueues through the same ``Client`` a Python producer uses, and reads job
records from RQ.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..state import metrics
from ..config import Settings
from ..state.connection import REDIS_DOWN, redis_from_url
from ..errors import (
    InvalidRequest,
    JobConflict,
    JobFailed,
    JobNotFound,
    LatentqError,
    QueueFull,
    StoreError,
    Unavailable,
)
from ..webhooks.outbox import Drainer
from ..producer.client import Client
from ..state.records import is_record_key
from ..core.request import DecodeRequest, JobInfo
from ..store import LocalStore, ObjectStore, check_key
from ..state.tenants import TenantDirectory
from .auth import check_owner, install_tenants, request_tenant
from .batches import install_batch_routes
from .console import install_console
from .jobs import install_job_listing
from .openapi import errors
from .params import BatchId, IdempotencyKey, JobId, ResultKey, decode_params, read_latents
from .remote import install_remote_routes
from .waiter import LongPolls

__all__ = ["create_app", "MAX_WAIT_S"]

log = logging.getLogger("latentq.api")

MAX_WAIT_S = 300.0  # longest synchronous wait one request may ask for
# The API's threads share this many Redis connections (a burst waits for one rather than opening more);
# its event loop has as many again (api/waiter.py), and its one listener one.
REDIS_CONNECTIONS = 16
_BINARY = {"schema": {"type": "string", "format": "binary"}}
SAFETENSORS_BODY = {"requestBody": {"required": True, "description": "a one-tensor safetensors file",
                                    "content": {"application/octet-stream": _BINARY}}}  # fmt: skip
RESULT_RESPONSES = {
    200: {"description": "The object's bytes (local store)",
          "content": {kind: _BINARY for kind in ("image/png", "image/jpeg", "image/webp", "video/mp4",
                                                 "application/octet-stream")}},
    307: {"description": "Redirect to the object in the store (S3)"},
    **errors(403, 404),
}  # fmt: skip


def _error(status: int, kind: str, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"type": kind, "message": message, "field": field}, "detail": message}
    return JSONResponse(body, status_code=status, headers=headers)


_INPUT_FAILURES = ("InvalidRequest", "InvalidLatent", "LatentTooLarge", "UnsupportedFormat", "UnknownModel")


def _failed_status(reason: str) -> int:
    """A failed job's HTTP status: its input (422), someone ended it (409), else the worker's trouble (502)."""
    if reason.startswith(_INPUT_FAILURES):
        return 422
    if reason.startswith(("DeadlineExpired", "canceled", "expired")):
        return 409
    return 502


def create_app(
    settings: Settings | None = None, *, client: Client | None = None, store: ObjectStore | None = None
) -> FastAPI:
    settings = settings or Settings.from_env()
    owns_client = client is None
    client = client or Client(
        settings=settings, store=store, connection=redis_from_url(settings.redis_url, max_connections=REDIS_CONNECTIONS)
    )
    # Long-polls wait in the event loop on the client's one listener, not on threads.
    long_polls = LongPolls(client.listener(), settings.redis_url)

    def current_store() -> ObjectStore:
        """The store given, else this API's setting, else the deployment's (it moves when its workers' moves)."""
        return store if store is not None else client.store

    def publish() -> None:
        """The deployment learns this API's public URL and (when set here) its store, for every process."""
        try:
            if settings.public_url:
                client.deployment.publish_public_url(settings.public_url)
            if store is not None or settings.store:
                client.deployment.publish_store(current_store())
        except REDIS_DOWN as exc:  # a Redis outage at start: the workers' own description serves meanwhile
            log.warning("could not publish the deployment's description: %s", exc)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        client.listener().start(keep=True)  # subscribed before the first long-poll arrives, and stays
        await run_in_threadpool(publish)
        # This process's share of the webhook deliveries (latentq.webhooks.outbox), on a connection of its own.
        drainer = Drainer.from_settings(redis_from_url(settings.redis_url, max_connections=8), settings).start()
        yield
        await long_polls.aclose()
        await run_in_threadpool(drainer.stop)  # attempts in flight end; the rest stay in Redis for others
        drainer.connection.close()
        if owns_client:
            await run_in_threadpool(client.close)

    app = FastAPI(
        lifespan=lifespan,
        title="latentq",
        version=__version__,
        description="Queued, batched VAE decoding for latent diffusion models.",
        docs_url=None,  # /docs comes from install_console, with its assets served here (no CDN)
        redoc_url=None,
    )
    app.state.client = client
    app.state.long_polls = long_polls
    app.state.store = store  # None: the deployment's, as current_store() finds it
    app.state.current_store = current_store
    # Keys in Redis (latentq keys) and LATENTQ_API_KEYS; none anywhere: authentication is off.
    install_tenants(app, TenantDirectory(client.connection, settings.api_keys))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own checks (types, ranges) in latentq's error shape, naming the field and the limit.
        first = exc.errors()[0] if exc.errors() else {}
        field = str(first.get("loc", ["", "?"])[-1])
        return _error(422, "InvalidRequest", f"{field}: {first.get('msg', 'invalid value')}", field)

    @app.exception_handler(LatentqError)
    async def latentq_error(_: Request, exc: LatentqError) -> JSONResponse:
        if isinstance(exc, InvalidRequest):
            return _error(exc.status_code, type(exc).__name__, str(exc), exc.field)
        if isinstance(exc, QueueFull):
            return _error(429, type(exc).__name__, str(exc), headers={"Retry-After": str(exc.retry_after)})
        if isinstance(exc, JobNotFound):
            return _error(404, "JobNotFound", str(exc), "id")
        if isinstance(exc, JobConflict):
            return _error(409, "JobConflict", str(exc), "id")
        if isinstance(exc, StoreError):
            return _error(404, "StoreError", str(exc), "key")
        if isinstance(exc, JobFailed):  # a protocol route waited for a job that did not finish
            return _error(_failed_status(exc.reason), "JobFailed", str(exc), "id")
        if isinstance(exc, Unavailable):
            return _error(503, "Unavailable", str(exc), headers={"Retry-After": str(exc.retry_after)})
        return _error(500, type(exc).__name__, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own answers (no such route, method not allowed) in latentq's error shape too.
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        return _error(exc.status_code, kind, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def redis_unreachable(_: Request, exc: Exception) -> JSONResponse:
        # Redis blinked (restart, failover, network): a retryable 503, never a 500.
        return _error(503, "Unavailable", "Redis is unreachable; retry shortly", headers={"Retry-After": "2"})

    def url_for_result(request: Request, key: str) -> str | None:
        # Signed (local store): fetchable with no API key until it expires; made fresh on every read.
        base = client.deployment.public_url() or str(request.base_url)
        return client.deployment.result_url(current_store(), key, base)

    def authorise_unsigned_result(request: Request, key: str) -> None:
        """The one place an unsigned ``GET /v1/results/{key}`` is authorised.

        The API-key middleware has admitted the caller already (when keys are configured); a result
        belongs to the tenant that owns its job (the key's first segment).
        """
        job_id = key.split("/", 1)[0]
        try:
            owner = client.job_info(job_id).tenant
        except JobNotFound:
            raise StoreError(f"no result object {key!r}") from None
        if getattr(request.state, "scoped", False) and (owner or "default") != request_tenant(request).name:
            raise StoreError(f"no result object {key!r}")

    def not_found(job_id: str) -> str:
        # Word for word what an id that never existed gets: another tenant's ids are not confirmed.
        return f"job {job_id!r} (never submitted, or older than the result TTL)"

    def job_body(request: Request, job_id: str, wait: float = 0.0, info: JobInfo | None = None) -> dict[str, Any]:
        if info is None:  # a blocking wait: only for callers already on a thread
            info = client.wait_for(job_id, wait) if wait > 0 else client.job_info(job_id)
        body = info.to_dict()
        for item in body["results"] + ([body["preview"]] if body.get("preview") else []):
            item["url"] = url_for_result(request, item["key"])
        body["status_url"] = str(request.url_for("get_job", job_id=job_id))
        return body

    @app.post("/v1/jobs", status_code=202, summary="Submit one latent (a one-tensor safetensors body; or latent + audio_latents)",
              responses=errors(404, 408, 413, 429), openapi_extra=SAFETENSORS_BODY)  # fmt: skip
    async def submit_job(
        request: Request, decode_request: Annotated[DecodeRequest, Depends(decode_params)],
        idempotency_key: IdempotencyKey = None,
    ) -> JSONResponse:
        # one tensor, or a video latent with its audio_latents (LTX-2: one MP4 with sound)
        latent, audio = await read_latents(request, decode_request, client.registry, settings.limits)
        job = await run_in_threadpool(client.submit_request, latent, decode_request, tenant=request_tenant(request),
                                      idempotency_key=idempotency_key, audio_latents=audio)  # fmt: skip
        status_url = str(request.url_for("get_job", job_id=job.id))
        return JSONResponse(
            {"id": job.id, "model": decode_request.model, "status": "queued", "status_url": status_url},
            status_code=202,
            headers={"Location": status_url},
        )

    @app.get("/v1/jobs/{job_id}", name="get_job", summary="A job's status and, when finished, its result URLs",
             responses=errors(404))  # fmt: skip
    async def get_job(
        request: Request,
        job_id: JobId,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to wait for the job to end")] = 0,
    ) -> dict[str, Any]:
        info = await run_in_threadpool(client.job_info, job_id)
        check_owner(request, info.tenant, not_found(job_id))
        if wait > 0 and not info.status.is_final:  # awaits the listener: holds no thread while it waits
            await long_polls.until_ended(job_id, wait, info.deadline)
            info = await run_in_threadpool(client.job_info, job_id)
        return job_body(request, job_id, info=info)

    @app.delete("/v1/jobs/{job_id}", summary="Cancel a job that has not started (409 once started or ended)",
                responses=errors(404, 409))  # fmt: skip
    async def cancel_job(request: Request, job_id: JobId) -> dict[str, Any]:
        info = await run_in_threadpool(client.job_info, job_id)
        check_owner(request, info.tenant, not_found(job_id))
        await run_in_threadpool(client.cancel, job_id)
        return await run_in_threadpool(job_body, request, job_id)

    @app.get("/v1/batches/{batch_id}", summary="Counts per status and every job of a submit_many batch",
             responses=errors(404))  # fmt: skip
    async def get_batch(request: Request, batch_id: BatchId) -> dict[str, Any]:
        body = await run_in_threadpool(client.batch_info, batch_id, lambda key: url_for_result(request, key))
        check_owner(request, body["jobs"][0]["tenant"] if body["jobs"] else None, f"batch {batch_id!r}")
        for job in body["jobs"]:
            job["status_url"] = str(request.url_for("get_job", job_id=job["id"]))
        return body

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse, responses=errors())
    async def get_metrics() -> PlainTextResponse:
        def render() -> str:
            names = client.registry.names()
            depth = {name: client.queued_count(name) for name in names}
            workers = {name: client.workers_serving(name) for name in names}
            return metrics.render(client.connection, names, depth, workers)

        text = await run_in_threadpool(render)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/v1/results/{key:path}", name="get_result", summary="A stored result object",
             responses=RESULT_RESPONSES)  # fmt: skip
    async def get_result(
        request: Request,
        key: ResultKey,
        expires: Annotated[str | None, Query(description="signed URL: its expiry (unix seconds)")] = None,
        sig: Annotated[str | None, Query(description="signed URL: HMAC-SHA256 of key and expiry")] = None,
    ) -> Response:
        check_key(key)
        if expires is not None or sig is not None:  # signed: no API key needed, the signature is the grant
            problem = await run_in_threadpool(client.deployment.check_signature, key, expires, sig)
            if problem is not None:
                return _error(403, "Forbidden", problem[1], problem[0])
        else:
            authorise_unsigned_result(request, key)
        if is_record_key(key):  # a job's stored status: read through GET /v1/jobs/{id} (and its auth)
            raise StoreError(f"no result object {key!r}")
        where = await run_in_threadpool(current_store)
        if isinstance(where, LocalStore):
            path = where.path(key)
            if not path.is_file():
                raise StoreError(f"no result object {key!r}")
            return FileResponse(path, headers={"Cache-Control": "private, max-age=86400, immutable"})
        return RedirectResponse(where.url(key), status_code=307)

    @app.get("/v1/models", summary="The models this deployment serves", responses=errors())
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

    @app.get("/healthz", summary="Liveness: the API runs and reaches Redis", responses=errors())
    async def healthz() -> JSONResponse:
        try:
            await long_polls.ping()  # async: answers at once however many threads are busy
        except (RedisConnectionError, RedisTimeoutError) as exc:
            message = f"Redis is unreachable: {exc}"
            body = {"status": "error", "redis": str(exc),
                    "error": {"type": "Unavailable", "message": message, "field": None}, "detail": message}  # fmt: skip
            return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
        return JSONResponse({"status": "ok", "redis": "ok", "version": __version__, "waiting": long_polls.waiting})

    install_job_listing(app, client, url_for_result)  # GET /v1/jobs
    install_console(app, client)  # the console at /, GET /v1/overview, offline /docs
    install_batch_routes(app, client, settings)
    install_remote_routes(app, client, settings)  # diffusers' remote_decode / remote_encode protocol
    return app
