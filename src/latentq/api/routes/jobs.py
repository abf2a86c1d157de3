"""``/v1/jobs``: submit one latent, a job's status (a long-poll with ``wait``), cancel, and the tenant's jobs.

``GET /v1/jobs`` lists the tenant's recent jobs from its recent-jobs index (``latentq.state.recent``); each
job's status is read as ``GET /v1/jobs/{id}`` reads it. Filters (model, status) are applied to what is
read, so one page scans at most ``SCAN_LIMIT`` index entries and hands back a cursor where it stopped:
a sparse filter still answers quickly, in several pages.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ...core.request import DecodeRequest, JobInfo, JobStatus
from ...errors import InvalidRequest, JobNotFound
from ...producer.service import JobService
from ...state.recent import Cursor, forget_recent_jobs, recent_job_ids
from ...state.tenants import DEFAULT_TENANT
from ..auth import check_owner, request_tenant
from ..context import ApiContext, Context
from ..openapi import errors
from ..params import IdempotencyKey, JobId, decode_params, read_latents

__all__ = ["MAX_LIMIT", "MAX_WAIT_S", "SCAN_LIMIT", "job_body", "list_jobs", "router", "tenant_of"]

MAX_WAIT_S = 300.0  # longest synchronous wait one request may ask for
MAX_LIMIT = 100  # jobs per page
SCAN_LIMIT = 500  # index entries one page may read while filtering
READ_THREADS = 8  # a page's statuses are read concurrently (one Redis round trip or store read each)
CURSOR_PATTERN = r"^[0-9.eE+-]{1,32}_[A-Za-z0-9_-]{1,64}$"
_BINARY = {"schema": {"type": "string", "format": "binary"}}
SAFETENSORS_BODY = {"requestBody": {"required": True, "description": "a one-tensor safetensors file",
                                    "content": {"application/octet-stream": _BINARY}}}  # fmt: skip

router = APIRouter()


def not_found(job_id: str) -> str:
    # Word for word what an id that never existed gets: another tenant's ids are not confirmed.
    return f"job {job_id!r} (never submitted, or older than the result TTL)"


def job_body(ctx: ApiContext, request: Request, job_id: str, wait: float = 0.0,
             info: JobInfo | None = None) -> dict[str, Any]:  # fmt: skip
    """A job's status as the API answers it: result URLs for this request, its ``status_url``."""
    if info is None:  # a blocking wait: only for callers already on a thread
        info = ctx.service.wait_for(job_id, wait) if wait > 0 else ctx.service.job_info(job_id)
    body = info.to_dict()
    for item in body["results"] + ([body["preview"]] if body.get("preview") else []):
        item["url"] = ctx.url_for_result(request, item["key"])
    body["status_url"] = str(request.url_for("get_job", job_id=job_id))
    return body


@router.post("/v1/jobs", status_code=202, summary="Submit one latent (a one-tensor safetensors body; or latent + audio_latents)",
             responses=errors(404, 408, 413, 429), openapi_extra=SAFETENSORS_BODY)  # fmt: skip
async def submit_job(
    request: Request, decode_request: Annotated[DecodeRequest, Depends(decode_params)], ctx: Context,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    # one tensor, or a video latent with its audio_latents (LTX-2: one MP4 with sound)
    latent, audio = await read_latents(request, decode_request, ctx.service.registry, ctx.settings.limits)
    job = await run_in_threadpool(ctx.service.submit, latent, decode_request, tenant=request_tenant(request),
                                  idempotency_key=idempotency_key, audio_latents=audio)  # fmt: skip
    status_url = str(request.url_for("get_job", job_id=job.id))
    return JSONResponse(
        {"id": job.id, "model": decode_request.model, "status": "queued", "status_url": status_url},
        status_code=202,
        headers={"Location": status_url},
    )


@router.get("/v1/jobs/{job_id}", name="get_job", summary="A job's status and, when finished, its result URLs",
            responses=errors(404))  # fmt: skip
async def get_job(
    request: Request,
    job_id: JobId,
    ctx: Context,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to wait for the job to end")] = 0,
) -> dict[str, Any]:
    info = await run_in_threadpool(ctx.service.job_info, job_id)
    check_owner(request, info.tenant, not_found(job_id))
    if wait > 0 and not info.status.is_final:  # awaits the listener: holds no thread while it waits
        await ctx.long_polls.until_ended(job_id, wait, info.deadline)
        info = await run_in_threadpool(ctx.service.job_info, job_id)
    return job_body(ctx, request, job_id, info=info)


@router.delete("/v1/jobs/{job_id}", summary="Cancel a job that has not started (409 once started or ended)",
               responses=errors(404, 409))  # fmt: skip
async def cancel_job(request: Request, job_id: JobId, ctx: Context) -> dict[str, Any]:
    info = await run_in_threadpool(ctx.service.job_info, job_id)
    check_owner(request, info.tenant, not_found(job_id))
    await run_in_threadpool(ctx.service.cancel, job_id)
    return await run_in_threadpool(job_body, ctx, request, job_id)


# --- GET /v1/jobs: the tenant's recent jobs, paged by cursor (the console's gallery, scripts) -----------
def tenant_of(request: Request) -> str:
    """The name of the tenant the auth middleware resolved for this request ("default" without keys)."""
    tenant = getattr(request.state, "tenant", None)
    return getattr(tenant, "name", None) or DEFAULT_TENANT


def _encode_cursor(cursor: Cursor) -> str:
    return f"{cursor[0]!r}_{cursor[1]}"


def _decode_cursor(raw: str) -> Cursor:
    score, _, job_id = raw.partition("_")
    try:
        value = float(score)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not job_id:
        raise InvalidRequest(f"cursor {raw[:80]!r} is not one this API answered", field="cursor")
    return value, job_id


def list_jobs(service: JobService, tenant: str, *, limit: int, cursor: Cursor | None = None,
              model: str | None = None, status: JobStatus | None = None,
              url_for: Callable[[str], str | None] | None = None) -> tuple[list[JobInfo], Cursor | None]:  # fmt: skip
    """One page of the tenant's jobs (newest first) and the cursor of the next, None at the end."""

    def read(entry: Cursor) -> JobInfo | None:
        try:
            return service.job_info(entry[1], url_for)
        except JobNotFound:
            return None  # older than its record's TTL: the index outlives it

    found: list[JobInfo] = []
    gone: list[str] = []
    scanned, after, exhausted = 0, cursor, False
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        while len(found) < limit and scanned < SCAN_LIMIT and not exhausted:
            want = min(limit - len(found) if status is None and model is None else 50, SCAN_LIMIT - scanned)
            entries = recent_job_ids(service.connection, tenant, want, after)
            for entry, info in zip(entries, pool.map(read, entries)):
                scanned, after = scanned + 1, entry
                if info is None:
                    gone.append(entry[1])
                    continue
                if (model and info.model != model) or (status and info.status is not status):
                    continue
                found.append(info)
                if len(found) == limit:
                    break
            exhausted = len(entries) < want and len(found) < limit
    forget_recent_jobs(service.connection, tenant, gone)  # each stale entry is read once, not on every page
    return found, None if exhausted else after


@router.get("/v1/jobs", summary="The tenant's recent jobs, newest first (paged: pass next_cursor back)",
            responses=errors(404))  # fmt: skip
async def get_jobs(
    request: Request,
    ctx: Context,
    model: Annotated[str | None, Query(description="only this model's jobs")] = None,
    status: Annotated[str | None, Query(description="only jobs in this status: " + ", ".join(JobStatus))] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="jobs per page")] = 24,
    cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN, description="next_cursor of the last page")] = None,
) -> dict[str, Any]:
    if model:
        ctx.service.registry.get(model)  # an unknown model is a 404 naming it, not an empty list
    wanted = None
    if status:
        try:
            wanted = JobStatus(status)
        except ValueError:
            raise InvalidRequest(f"status must be one of {', '.join(JobStatus)}, got {status[:40]!r}",
                                 field="status") from None  # fmt: skip
    after = _decode_cursor(cursor) if cursor else None
    infos, next_cursor = await run_in_threadpool(list_jobs, ctx.service, tenant_of(request), limit=limit,
                                                 cursor=after, model=model, status=wanted,
                                                 url_for=ctx.url_for(request))  # fmt: skip
    jobs = []
    for info in infos:
        body = info.to_dict()
        body["status_url"] = str(request.url_for("get_job", job_id=info.id))
        jobs.append(body)
    return {"jobs": jobs, "next_cursor": _encode_cursor(next_cursor) if next_cursor else None}
