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
input, ``except latentq.LatentqError`` for everything of ours.
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
    "UnknownModel",
    "Unavailable",
    "UnsupportedFormat",
]


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
    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"job {job_id} failed: {reason}")
        self.job_id = job_id
        self.reason = reason


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
