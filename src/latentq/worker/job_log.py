"""The fields a log line about one job carries (the JSON log formatter adds them): the worker's and upkeep's."""

from __future__ import annotations

from typing import Any

from rq.job import Job as RQJob

from ..state.payload import request_field

__all__ = ["log_fields"]


def log_fields(job: RQJob) -> dict[str, Any]:
    """Fields the JSON log formatter adds to a line about this job."""
    return {"job_id": job.id, "batch_id": (job.meta or {}).get("batch_id"), "model": request_field(job.kwargs, "model")}
