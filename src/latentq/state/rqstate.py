"""Every use of RQ's internals, in one place (tested against RQ's stock worker in tests/test_rqstate.py).

RQ has no batching hook and no fenced writes, so latentq writes RQ's job
state itself: the same keys and fields RQ's ``SimpleWorker`` writes when it
starts, finishes, fails, retries or cancels a job. Each function here buffers
those writes into a pipeline (``fence.capture``) without sending them; the
job lifecycle (``lifecycle``) sends them through a fence. RQ's private names
change between minor versions: pyproject pins ``rq`` to the minor version
this module is tested against.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Protocol

from redis.client import Pipeline
from rq import Queue
from rq.executions import Execution
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus
from rq.results import Result
from rq.utils import now, utcformat
from rq.worker import BaseWorker, WorkerStatus

__all__ = [
    "RQWorker",
    "cancel_writes",
    "fail_writes",
    "finish_writes",
    "job_from_record",
    "meta_write",
    "now",
    "recover_started",
    "result_ttl_of",
    "start_writes",
    "worker_busy_writes",
]



class RQWorker(Protocol):
    """What RQ's record writes use of the worker a job runs on (an ``rq.worker.BaseWorker``: latentq's
    ``DecodeWorker`` in production, RQ's own in the conformance tests)."""

    name: str
    key: str
    default_result_ttl: int

    def set_state(self, state: WorkerStatus, pipeline: Any = None) -> None: ...

    def cleanup_execution(self, job: RQJob, pipeline: Any, execution: Execution | None = None) -> None: ...

    def increment_failed_job_count(self, pipeline: Any = None) -> None: ...

    def increment_total_working_time(self, job_execution_time: timedelta, pipeline: Any) -> None: ...


def job_from_record(job: RQJob, raw: dict[bytes, bytes]) -> None:
    """Load ``job`` (an id-only handle) from its hash as read before the start's writes, then apply them."""
    written = (job.worker_name, job.last_heartbeat, job.started_at, job.get_status(refresh=False))
    job.restore(raw)
    job.worker_name, job.last_heartbeat, job.started_at, job._status = written


def worker_busy_writes(worker: RQWorker, pipe: Pipeline) -> None:
    worker.set_state(WorkerStatus.BUSY, pipeline=pipe)


def start_writes(worker: RQWorker, job: RQJob, queue: Queue, ttl: int, pipe: Pipeline) -> Execution:
    """What RQ's worker writes when it starts a job (``prepare_execution`` + ``prepare_job_execution``)."""
    execution = Execution.create(job, ttl, pipeline=pipe, worker_name=worker.name)
    job.prepare_for_execution(worker.name, pipeline=pipe)  # status, started_at, last_heartbeat, worker
    pipe.persist(job.key)
    pipe.lrem(queue.intermediate_queue_key, 1, job.id)
    return execution


def result_ttl_of(job: RQJob, worker: RQWorker) -> int | None:
    return job.get_result_ttl(worker.default_result_ttl)


def finish_writes(worker: RQWorker, job: RQJob, execution: Execution, result: dict[str, Any], ended: datetime,
                  pipe: Pipeline) -> None:  # fmt: skip
    """What RQ's ``Job._handle_success`` + execution cleanup write, less a re-save of unchanged job fields
    and the expiry of dependents keys (latentq jobs have no dependents)."""
    job.ended_at = ended
    job._status = RQStatus.FINISHED
    job._result = result
    result_ttl = result_ttl_of(job, worker)
    pipe.hset(job.key, mapping={"status": RQStatus.FINISHED.value, "ended_at": utcformat(ended)})
    if result_ttl != 0:
        Result.create(job, Result.Type.SUCCESSFUL, return_value=result, ttl=result_ttl, worker_name=worker.name,
                      pipeline=pipe, execution_id=execution.id, execution_started_at=execution.created_at,
                      execution_ended_at=ended)  # fmt: skip
        job.finished_job_registry.add(job, result_ttl, pipe)
    if result_ttl == 0:
        job.delete(pipeline=pipe, remove_from_queue=False)
    elif result_ttl is not None and result_ttl > 0:  # negative: kept (persisted at start)
        pipe.expire(job.key, result_ttl)
    worker.cleanup_execution(job, pipeline=pipe, execution=execution)
    pipe.hincrby(worker.key, "successful_job_count", 1)
    if job.started_at is not None:
        pipe.hincrbyfloat(worker.key, "total_working_time", (ended - job.started_at).total_seconds())


def fail_writes(worker: RQWorker, job: RQJob, queue: Queue, execution: Execution | None, reason: str, *, retry: bool,
                pipe: Pipeline) -> None:  # fmt: skip
    """What RQ's ``handle_job_failure`` writes: a retry re-queues the job, else it goes to the failed registry."""
    job.ended_at = job.ended_at or now()
    if not retry:
        job.set_status(RQStatus.FAILED, pipeline=pipe)
    worker.cleanup_execution(job, pipeline=pipe, execution=execution)
    if not retry:
        job._handle_failure(reason, pipeline=pipe, worker_name=worker.name,
                            execution_id=execution.id if execution else None,
                            execution_started_at=execution.created_at if execution else None,
                            execution_ended_at=job.ended_at)  # fmt: skip
    worker.increment_failed_job_count(pipe)
    if job.started_at and job.ended_at:
        worker.increment_total_working_time(job.ended_at - job.started_at, pipe)
    if retry:
        job.retry(queue, pipe)


def cancel_writes(job: RQJob, pipe: Pipeline) -> None:
    """What RQ's ``Job.cancel`` writes: status canceled, out of its queue, into the canceled registry."""
    job.cancel(pipeline=pipe)


def meta_write(job: RQJob, pipe: Pipeline) -> None:
    """``Job.save_meta`` into a pipeline."""
    pipe.hset(job.key, "meta", job.serializer.dumps(job.meta))


def recover_started(queue: Queue) -> None:
    """RQ's abandoned-job handling of one queue: executions whose heartbeat lapsed are retried or failed."""
    queue.started_job_registry.cleanup()


def prune_registries(queue: Queue) -> None:
    """Drop registry entries of job records that expired (RQ itself does this every 10 minutes)."""
    queue.finished_job_registry.cleanup()
    queue.failed_job_registry.cleanup()


def stop_requested(worker: BaseWorker) -> bool:
    """Whether RQ's worker got a stop signal (its loop then ends on purpose, not on an error).

    RQ flags ``_stop_requested`` only when the signal comes during a job; idle, it just raises out of its
    loop, having noted the time of the request.
    """
    return bool(worker._stop_requested or worker._shutdown_requested_date is not None)


__all__ += ["prune_registries", "stop_requested"]
