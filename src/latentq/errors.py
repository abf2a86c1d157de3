"""The exceptions latentq raises, in one small tree.

    LatentqError
    ├── InvalidRequest          (also a ValueError: the caller sent something wrong)
    │   ├── UnknownModel
    │   ├── InvalidLatent       (shape, channels, dtype, non-finite values)
    │   ├── LatentTooLarge      (over a configured size limit)
    │   └── UnsupportedFormat   (output format or option not offered)
    ├── QueueFull               (backpressure: too many jobs waiting for a model or a tenant)
    │   └── RateLimited         (a tenant submits faster than its rate)
    ├── JobNotFound
    ├── JobConflict             (e.g. cancel of a job that already started or ended)
    ├── JobFailed               (the worker recorded a failure; .reason says why)
    ├── JobTimeout              (Job.wait ran out of time; the job goes on)
    ├── ModelLoadError          (weights or config could not be loaded)
    ├── StoreError              (the object store refused a read or write)
    ├── ConfigError             (a models file or setting is wrong)
    └── Unavailable             (Redis or another dependency cannot be reached now; retry later)

Callers catch at any level: ``except latentq.InvalidRequest`` for all bad
input, ``except latentq.LatentqError`` for everything of ours. ``HTTP_ERRORS``
(at the end) is the HTTP status and error body the API answers each one with.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InvalidLatent",
    "InvalidRequest",
    "JobConflict",
    "JobFailed",
    "JobNotFound",
    "JobTimeout",
    "LatentTooLarge",
    "LatentqError",
    "ModelLoadError",
    "QueueFull",
    "RateLimited",
    "StoreError",
    "Unavailable",
    "UnknownModel",
    "UnsupportedFormat",
]  # the exceptions; HTTP_ERRORS and http_error (below) are the API's, not the package's


class LatentqError(Exception):
    """Base of every exception latentq raises."""


class InvalidRequest(LatentqError, ValueError):
    """The request is malformed; ``field`` names the offending part."""

    status_code = 422

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownModel(InvalidRequest):
    status_code = 404


class InvalidLatent(InvalidRequest):
    pass


class LatentTooLarge(InvalidRequest):
    status_code = 413


class UnsupportedFormat(InvalidRequest):
    pass


class QueueFull(LatentqError):
    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(QueueFull):
    """A tenant's submits per second are used up; ``retry_after`` says when the next one is allowed."""


class JobNotFound(LatentqError):
    pass


class JobConflict(LatentqError):
    pass


class JobFailed(LatentqError):
    """A job failed or expired. ``failure``: why, as the job's record says (``"input"``, ``"ended"``,
    ``"worker"``; ``latentq.core.request.FailureKind``), which decides the API's status for it."""

    def __init__(self, job_id: str, reason: str, failure: str | None = None) -> None:
        super().__init__(f"job {job_id} failed: {reason}")
        self.job_id = job_id
        self.reason = reason
        self.failure = getattr(failure, "value", failure)

    @property
    def status_code(self) -> int:
        """Its HTTP status: its input (422), someone ended it (409), else the worker's trouble (502)."""
        if self.failure is not None:
            return FAILURE_STATUS.get(self.failure, 502)
        # A job that failed before failures were recorded (a record written by an older latentq): its reason.
        if self.reason.startswith(_INPUT_FAILURES):
            return 422
        if self.reason.startswith(("DeadlineExpired", "canceled", "expired")):
            return 409
        return 502


class JobTimeout(LatentqError):
    pass


class ModelLoadError(LatentqError):
    pass


class StoreError(LatentqError):
    pass


class ConfigError(LatentqError):
    pass


class Unavailable(LatentqError):
    """A dependency (Redis) cannot be reached right now; the request may be retried after ``retry_after`` s."""

    def __init__(self, message: str, *, retry_after: int = 2) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# --- how the HTTP API answers each one (latentq.api's one handler reads this table) ----------------------
FAILURE_STATUS = {"input": 422, "ended": 409, "worker": 502}  # a failed job's HTTP status, by its FailureKind
_INPUT_FAILURES = ("InvalidRequest", "InvalidLatent", "LatentTooLarge", "UnsupportedFormat", "UnknownModel")
OWN = "own"  # in HTTP_ERRORS: the exception's own value (its status_code, its class name, its field)

# The first row whose class the exception is an instance of answers: HTTP status, the error body's "type"
# and "field". An exception with a ``retry_after`` (QueueFull, Unavailable) also gets a Retry-After header.
HTTP_ERRORS: tuple[tuple[type[LatentqError], int | str, str, str | None], ...] = (
    (InvalidRequest, OWN, OWN, OWN),  # 422; UnknownModel 404, LatentTooLarge 413 (and the API's 408)
    (QueueFull, 429, OWN, None),  # QueueFull or RateLimited
    (JobNotFound, 404, "JobNotFound", "id"),
    (JobConflict, 409, "JobConflict", "id"),
    (StoreError, 404, "StoreError", "key"),
    (JobFailed, OWN, "JobFailed", "id"),  # a protocol route waited for a job that did not finish
    (Unavailable, 503, "Unavailable", None),
    (JobTimeout, 504, "JobTimeout", None),  # a protocol route's wait ran out (its queued jobs are canceled)
    (LatentqError, 500, OWN, None),
)


def http_error(exc: LatentqError) -> tuple[int, str, str | None, dict[str, str] | None]:
    """How the HTTP API answers ``exc`` (HTTP_ERRORS): status, error type, error field, extra headers."""
    _, status, kind, field = next(row for row in HTTP_ERRORS if isinstance(exc, row[0]))
    retry_after = getattr(exc, "retry_after", None)
    return (
        exc.status_code if status == OWN else int(status),  # type: ignore[attr-defined]
        type(exc).__name__ if kind == OWN else kind,
        exc.field if field == OWN else field,  # type: ignore[attr-defined]
        {"Retry-After": str(retry_after)} if retry_after is not None else None,
    )
