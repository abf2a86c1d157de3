"""``GET /v1/jobs``: the tenant's recent jobs, newest first, paged by cursor (the console's gallery, scripts).

The list comes from the tenant's recent-jobs index (``latentq.state.recent``); each job's status is read as
``GET /v1/jobs/{id}`` reads it. Filters (model, status) are applied to what is read, so one page scans
at most ``SCAN_LIMIT`` index entries and hands back a cursor where it stopped: a sparse filter still
answers quickly, in several pages.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool

from ..errors import InvalidRequest, JobNotFound
from ..producer.client import Client
from ..state.recent import DEFAULT_TENANT, Cursor, forget_recent_jobs, recent_job_ids
from ..core.request import JobInfo, JobStatus
from .openapi import errors

__all__ = ["MAX_LIMIT", "SCAN_LIMIT", "install_job_listing", "list_jobs", "tenant_of"]

MAX_LIMIT = 100  # jobs per page
SCAN_LIMIT = 500  # index entries one page may read while filtering
READ_THREADS = 8  # a page's statuses are read concurrently (one Redis round trip or store read each)
CURSOR_PATTERN = r"^[0-9.eE+-]{1,32}_[A-Za-z0-9_-]{1,64}$"


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


def list_jobs(client: Client, tenant: str, *, limit: int, cursor: Cursor | None = None, model: str | None = None,
              status: JobStatus | None = None,
              url_for: Callable[[str], str | None] | None = None) -> tuple[list[JobInfo], Cursor | None]:  # fmt: skip
    """One page of the tenant's jobs (newest first) and the cursor of the next, None at the end."""

    def read(entry: Cursor) -> JobInfo | None:
        try:
            return client.job_info(entry[1], url_for)
        except JobNotFound:
            return None  # older than its record's TTL: the index outlives it

    found: list[JobInfo] = []
    gone: list[str] = []
    scanned, after, exhausted = 0, cursor, False
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        while len(found) < limit and scanned < SCAN_LIMIT and not exhausted:
            want = min(limit - len(found) if status is None and model is None else 50, SCAN_LIMIT - scanned)
            entries = recent_job_ids(client.connection, tenant, want, after)
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
    forget_recent_jobs(client.connection, tenant, gone)  # each stale entry is read once, not on every page
    return found, None if exhausted else after


def install_job_listing(app: FastAPI, client: Client, url_for_result: Callable[[Request, str], str | None]) -> None:
    """Add ``GET /v1/jobs`` to ``app``; ``url_for_result(request, key)`` makes result URLs as the job route does."""

    @app.get("/v1/jobs", summary="The tenant's recent jobs, newest first (paged: pass next_cursor back)",
             responses=errors(404))  # fmt: skip
    async def get_jobs(
        request: Request,
        model: Annotated[str | None, Query(description="only this model's jobs")] = None,
        status: Annotated[str | None, Query(description="only jobs in this status: " + ", ".join(JobStatus))] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="jobs per page")] = 24,
        cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN, description="next_cursor of the last page")] = None,
    ) -> dict[str, Any]:
        if model:
            client.registry.get(model)  # an unknown model is a 404 naming it, not an empty list
        wanted = None
        if status:
            try:
                wanted = JobStatus(status)
            except ValueError:
                raise InvalidRequest(f"status must be one of {', '.join(JobStatus)}, got {status[:40]!r}",
                                     field="status") from None  # fmt: skip
        after = _decode_cursor(cursor) if cursor else None

        def url_for(key: str) -> str | None:
            return url_for_result(request, key)

        infos, next_cursor = await run_in_threadpool(list_jobs, client, tenant_of(request), limit=limit,
                                                     cursor=after, model=model, status=wanted, url_for=url_for)  # fmt: skip
        jobs = []
        for info in infos:
            body = info.to_dict()
            body["status_url"] = str(request.url_for("get_job", job_id=info.id))
            jobs.append(body)
        return {"jobs": jobs, "next_cursor": _encode_cursor(next_cursor) if next_cursor else None}
