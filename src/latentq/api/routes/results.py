"""``GET /v1/results/{key}``: a stored result object (local store), or a redirect to it (S3).

A signed URL (``?expires=...&sig=...``, what job statuses carry for the local store) is its own grant;
an unsigned read is the owning tenant's only (the key's first segment is its job's id).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse, Response

from ...errors import JobNotFound, StoreError
from ...state.records import is_record_key
from ...state.tenants import DEFAULT_TENANT
from ...store import LocalStore, check_key
from ..auth import request_tenant
from ..context import ApiContext, Context
from ..openapi import error_response, errors
from ..params import ResultKey

__all__ = ["RESULT_RESPONSES", "router"]

_BINARY = {"schema": {"type": "string", "format": "binary"}}
RESULT_RESPONSES = {
    200: {"description": "The object's bytes (local store)",
          "content": {kind: _BINARY for kind in ("image/png", "image/jpeg", "image/webp", "video/mp4",
                                                 "application/octet-stream")}},
    307: {"description": "Redirect to the object in the store (S3)"},
    **errors(403, 404),
}  # fmt: skip

router = APIRouter()


def authorise_unsigned_result(ctx: ApiContext, request: Request, key: str) -> None:
    """The one place an unsigned ``GET /v1/results/{key}`` is authorised.

    The API-key middleware has admitted the caller already (when keys are configured); a result
    belongs to the tenant that owns its job (the key's first segment).
    """
    job_id = key.split("/", 1)[0]
    try:
        owner = ctx.service.job_info(job_id).tenant
    except JobNotFound:
        raise StoreError(f"no result object {key!r}") from None
    if getattr(request.state, "scoped", False) and (owner or DEFAULT_TENANT) != request_tenant(request).name:
        raise StoreError(f"no result object {key!r}")


@router.get("/v1/results/{key:path}", name="get_result", summary="A stored result object",
            responses=RESULT_RESPONSES)  # fmt: skip
async def get_result(
    request: Request,
    key: ResultKey,
    ctx: Context,
    expires: Annotated[str | None, Query(description="signed URL: its expiry (unix seconds)")] = None,
    sig: Annotated[str | None, Query(description="signed URL: HMAC-SHA256 of key and expiry")] = None,
) -> Response:
    check_key(key)
    if expires is not None or sig is not None:  # signed: no API key needed, the signature is the grant
        problem = await run_in_threadpool(ctx.service.deployment.check_signature, key, expires, sig)
        if problem is not None:
            return error_response(403, "Forbidden", problem[1], problem[0])
    else:
        authorise_unsigned_result(ctx, request, key)
    if is_record_key(key):  # a job's stored status: read through GET /v1/jobs/{id} (and its auth)
        raise StoreError(f"no result object {key!r}")
    where = await run_in_threadpool(ctx.current_store)
    if isinstance(where, LocalStore):
        path = where.path(key)
        if not path.is_file():
            raise StoreError(f"no result object {key!r}")
        return FileResponse(path, headers={"Cache-Control": "private, max-age=86400, immutable"})
    return RedirectResponse(where.url(key), status_code=307)
