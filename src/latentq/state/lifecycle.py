"""The job lifecycle: every way a job ends goes through ``end_jobs``.

A job ends finished (its outputs and store record already written), failed,
re-queued for a retry, canceled or expired. Whoever ends it (a worker's
committer, a worker's failure path, the Client or the API canceling or
expiring a queued job) builds an ``Ending`` and calls ``end_jobs``, which
writes, per job and atomically behind the job's fence (``fence``):

- RQ's record: status, result or failure, registries, execution cleanup (``rqstate``);
- latentq's metrics (status counters, timing histograms);
- the deletion of the latent (kept for a retry) and of the lease;
- the done message that wakes waiting clients;
- for a job with a ``callback_url`` that ended (not a retry), its webhook, into the outbox (``outbox``).

A job whose fence refuses (its worker lost it, or it started before a
cancel) gets none of these: its effects happen once, by its owner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from redis import Redis
from rq import Queue
from rq.job import Job as RQJob

from ..core.request import FailureKind, JobStatus
from . import keys, outbox, rqstate
from .fence import APPLIED, GONE, Fenced, apply, capture, captured
from .metrics import MetricsBatch
from .payload import latent_key_of, request_field
from .rqstate import RQWorker
from .worker_stats import Counter

__all__ = ["FINAL_STATUSES", "Ending", "EndingWorker", "end_jobs"]


class EndingWorker(RQWorker, Protocol):
    """The worker jobs end under: RQ's record of it, latentq's stats of it and its result URLs (webhooks)."""

    stats_key: str
    url_for: Callable[[str], str | None]

FINAL_STATUSES = tuple(status.value for status in JobStatus if status.is_final)  # the ends a job can have


@dataclass
class Ending:
    """How one job ends. ``status``: finished, failed, retry, canceled or expired.

    A worker's ending is fenced by its lease ``token`` (with the ``execution`` that ran the job); an
    ending without a token is for a queued job (cancel, expire) and needs it queued and unleased.
    """

    job: RQJob
    status: str
    queue: Queue | None = None
    execution: Any = None
    token: str | None = None
    result: dict[str, Any] | None = None  # finished: RQ's return value
    reason: str = ""  # failed, retry, expired: the failure's text
    failure: FailureKind | None = None  # failed: why (expired and canceled: ENDED, whatever is given)
    ended: datetime | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # Result URLs in the webhook's payload (None: the ending worker's ``url_for``, else keys only).
    url_for: Callable[[str], str | None] | None = None

    @property
    def model(self) -> str:
        return str(request_field(self.job.kwargs, "model", ""))


def _metrics(job: RQJob, model: str, status: str, timings: dict[str, float]) -> MetricsBatch:
    """A job's end in the metrics: its status, and for a finished one its encode, store and end-to-end times."""
    metrics = MetricsBatch()
    metrics.status(model, status)
    if status == "finished":
        latency = (job.ended_at - job.enqueued_at).total_seconds() if job.ended_at and job.enqueued_at else None
        metrics.job(model, encode_seconds=timings.get("encode", 0.0), store_seconds=timings.get("store", 0.0),
                    latency_seconds=latency)  # fmt: skip
    return metrics


def _writes(connection: Redis, worker: EndingWorker | None, ending: Ending) -> list[tuple[Any, ...]]:
    job, status = ending.job, ending.status
    pipe = capture(connection)
    if status == "finished":
        assert ending.result is not None and worker is not None
        rqstate.finish_writes(worker, job, ending.execution, ending.result, ending.ended or rqstate.now(), pipe)
    elif status in ("failed", "retry") or (status == "expired" and worker is not None):
        if status == "expired":
            job.meta["expired"] = True
        if status != "retry":  # a retry has not failed yet
            job.meta["failure"] = (FailureKind.ENDED if status == "expired" else ending.failure or FailureKind.WORKER).value
        rqstate.meta_write(job, pipe)
        rqstate.fail_writes(worker, job, ending.queue, ending.execution, ending.reason, retry=status == "retry",
                            pipe=pipe)  # fmt: skip
    elif status in ("canceled", "expired"):  # a queued job, ended without a worker
        if status == "expired":
            job.meta["expired"] = True
        job.meta["failure"] = FailureKind.ENDED.value
        rqstate.meta_write(job, pipe)
        rqstate.cancel_writes(job, pipe)
    else:
        raise ValueError(f"unknown ending {status!r}")
    pipe.delete(keys.lease_key(job.id))
    if status == "retry":  # back in its queue: its latent stays for the next attempt
        return captured(pipe)
    pipe.delete(latent_key_of(job.id, job.kwargs))
    _metrics(job, ending.model, status, ending.timings).write(pipe)
    _webhook(pipe, job, ending.model, status, ending.url_for or getattr(worker, "url_for", None), ending.result,
             ending.reason)
    if worker is not None:
        pipe.hincrby(worker.stats_key, (Counter.FINISHED if status == "finished" else Counter.FAILED).value, 1)
    pipe.publish(keys.job_done_channel(job.id), status)
    return captured(pipe)


def _webhook(pipe: Any, job: RQJob, model: str, status: str, url_for: Callable[[str], str | None] | None,
             result: dict[str, Any] | None, reason: str = "") -> None:
    """Queue the ended job's webhook in ``pipe`` (the end's own writes), if it asked for one."""
    callback = request_field(job.kwargs, "callback_url")
    if callback:
        data = outbox.event_data(job, status, url_for or (lambda key: None), result, reason)
        outbox.add(pipe, job.id, model, status, str(callback), data)


def end_jobs(connection: Redis, endings: list[Ending], *, worker: EndingWorker | None = None,
             extra: list[tuple[Any, ...]] | None = None) -> list[bool]:  # fmt: skip
    """End jobs in one atomic round trip; returns, per ending, whether it took effect.

    ``worker``: the decode worker ending its own jobs (RQ's worker counters); ``extra``: unfenced writes
    sent along (the worker's decode metrics).
    """
    items = []
    for ending in endings:
        kind = "lease" if ending.token is not None else "queued"
        items.append(Fenced(ending.job.id, ending.job.key, kind, ending.token or "", _writes(connection, worker, ending)))
    if extra:
        items.append(Fenced("", "", "none", writes=list(extra)))
    results, _ = apply(connection, items)
    return [code == APPLIED for code, _ in results[: len(endings)]]


def announce_finished(connection: Redis, job: RQJob, timings: dict[str, float], result: dict[str, Any] | None = None,
                      url_for: Callable[[str], str | None] | None = None) -> None:  # fmt: skip
    """What a job finished by RQ's own worker (``tasks.decode_job``) still needs from latentq: metrics,
    the latent's deletion, the done message, its webhook. RQ writes the rest when the task returns."""
    model = str(request_field(job.kwargs, "model", ""))
    metrics = _metrics(job, model, "finished", timings)
    with connection.pipeline(transaction=True) as pipe:
        metrics.write(pipe)
        if result is not None:
            _webhook(pipe, job, model, "finished", url_for, result)
        pipe.delete(latent_key_of(job.id, job.kwargs))
        pipe.publish(keys.job_done_channel(job.id), "finished")
        pipe.execute()


__all__ += ["APPLIED", "GONE", "announce_finished"]
