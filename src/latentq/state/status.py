"""Read a job's status from its RQ record: shared by the Client and the API."""

from __future__ import annotations

from collections.abc import Callable

from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus

from ..core.request import FailureKind, JobInfo, JobResult, JobStatus, ResultObject
from .payload import request_field

__all__ = ["STATUS_FROM_RQ", "job_info"]

STATUS_FROM_RQ: dict[str, JobStatus] = {
    RQStatus.CREATED.value: JobStatus.QUEUED,
    RQStatus.QUEUED.value: JobStatus.QUEUED,
    RQStatus.DEFERRED.value: JobStatus.QUEUED,
    RQStatus.SCHEDULED.value: JobStatus.QUEUED,
    RQStatus.STARTED.value: JobStatus.STARTED,
    RQStatus.FINISHED.value: JobStatus.FINISHED,
    RQStatus.FAILED.value: JobStatus.FAILED,
    RQStatus.STOPPED.value: JobStatus.FAILED,
    RQStatus.CANCELED.value: JobStatus.CANCELED,
}


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def _timings(rq_job: RQJob, record: JobResult) -> dict[str, float]:
    """A finished job's time, in ms, by stage (a stage the record does not carry is left out)."""
    timings = {}
    if rq_job.started_at is not None and rq_job.enqueued_at is not None:
        timings["waiting"] = round(max(0.0, (rq_job.started_at - rq_job.enqueued_at).total_seconds()) * 1000, 3)
    timings.update(record.timings_ms())
    return timings


def job_info(rq_job: RQJob, url_for: Callable[[str], str | None], queue=None, workers: int | None = None,
             *, result: JobResult | dict | None = None) -> JobInfo:  # fmt: skip
    """Build a JobInfo; ``url_for(key)`` turns a result key into a URL.

    ``result``: the finished job's result record, when the caller holds it (the worker, before it
    marks the job finished); otherwise a finished job's is read from Redis.
    """
    rq_status = rq_job.get_status(refresh=False)
    status = STATUS_FROM_RQ.get(rq_status.value if rq_status else "queued", JobStatus.QUEUED)
    if result is not None:
        status = JobStatus.FINISHED
    meta = rq_job.meta or {}
    if meta.get("expired") and status in (JobStatus.FAILED, JobStatus.CANCELED):
        status = JobStatus.EXPIRED
    info: dict = {
        "id": rq_job.id,
        "model": request_field(rq_job.kwargs, "model", ""),
        "status": status,
        "batch_id": meta.get("batch_id"),
        "metadata": request_field(rq_job.kwargs, "metadata") or {},
        "enqueued_at": _iso(rq_job.enqueued_at),
        "started_at": _iso(rq_job.started_at),
        "ended_at": _iso(rq_job.ended_at),
        "worker": rq_job.worker_name,
        "workers": workers,
        "deadline": request_field(rq_job.kwargs, "deadline"),
        "tenant": meta.get("tenant"),
    }
    if meta.get("preview"):
        info["preview"] = ResultObject.from_dict({**meta["preview"], "url": url_for(meta["preview"]["key"])})
    if status is JobStatus.QUEUED and queue is not None:
        info["queue_position"] = queue.get_job_position(rq_job.id)
        if workers == 0:
            info["waiting_reason"] = f"no live worker serves model {info['model']!r}"
    elif status is JobStatus.FINISHED:
        record = JobResult.from_dict(result if result is not None else rq_job.return_value(refresh=True))
        info["results"] = [ResultObject.from_dict({**item, "url": url_for(item["key"])}) for item in record.results]
        info["batch_size"] = record.batch_size
        info["tiled"] = record.tiled
        info["timings"] = _timings(rq_job, record)
    if status in (JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELED) and meta.get("failure"):
        info["failure"] = FailureKind(meta["failure"])
    if status in (JobStatus.FAILED, JobStatus.EXPIRED):
        result = rq_job.latest_result()
        info["error"] = (result.exc_string if result is not None else None) or (
            "DeadlineExpired: not started by its deadline" if status is JobStatus.EXPIRED else "failed"
        )
    elif status is JobStatus.CANCELED:
        info["error"] = "canceled before it started"
    return JobInfo(**info)
