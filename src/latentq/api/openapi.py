"""The error body every route answers with, declared in the OpenAPI document.

Every 4xx/5xx latentq sends is ``{"error": {"type", "message", "field"}, "detail"}``;
routes list the status codes they can return with ``responses=errors(...)`` so
the document is true (schemathesis checks it).
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

__all__ = ["ErrorBody", "ErrorDetail", "error_response", "errors"]


class ErrorDetail(BaseModel):
    type: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
    detail: str


_DESCRIPTIONS = {
    400: "Bad request",
    401: "Missing or invalid API key",
    403: "Forbidden",
    404: "Not found",
    408: "The request body was not received in time",
    409: "Conflict with the job's state",
    413: "Over a size limit",
    422: "Invalid parameter or body (the field is named)",
    429: "Queue full or rate limited (see Retry-After)",
    502: "The job failed in the worker for a reason not of the request's making",
    503: "Redis unreachable (see Retry-After)",
    504: "The job did not end within the wait",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each code with the error body's schema (401, 422 and 503 always)."""
    wanted = sorted({401, 422, 503, *codes})
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS.get(code, "Error")} for code in wanted}


def error_response(status: int, kind: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:  # fmt: skip
    """The error body (ErrorBody) as a response."""
    body = {"error": {"type": kind, "message": message, "field": field}, "detail": message}
    return JSONResponse(body, status_code=status, headers=headers)
