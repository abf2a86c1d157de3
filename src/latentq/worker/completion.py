"""Marking finished jobs finished: many jobs per Redis round trip.

RQ's own success path costs several round trips per job (a WATCH on the
job's dependents, then a MULTI/EXEC) plus, here, metrics and the done
message. For tiny decodes that is most of a job's cost. The encode threads
hand each stored job to one committer thread instead, which takes whatever
has piled up and writes it all in one transaction: RQ's records (status,
result, finished registry, execution cleanup, worker counters), the metrics,
the deletion of the latent and the wake-up messages for waiting clients.

latentq jobs never have RQ dependents, so the WATCH that guards RQ's
dependents bookkeeping is left out.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus
from rq.results import Result
from rq.utils import now, utcformat

from .. import keys
from ..metrics import MetricsBatch
from ..spec import JobInfo

__all__ = ["Completed", "Committer"]

log = logging.getLogger("latentq.worker")

MAX_COMMIT = 256  # jobs per transaction: bounds one MULTI/EXEC's size under a flood of tiny jobs


@dataclass
class Completed:
    """A job whose outputs are stored: what the committer needs to mark it finished."""

    job: RQJob
    queue: Any
    execution: Any
    model: str
    result: dict[str, Any]  # RQ's return value
    info: JobInfo  # the status it reports once finished, as written to the store (without URLs)
    timings: dict[str, float] = field(default_factory=dict)


class Committer:
    """Commits finished jobs in batches; ``after(job)`` runs once each is committed.

    Threaded (a GPU worker, whose encoder threads finish jobs while the next batch decodes):
    one thread takes whatever has piled up. In line (a CPU worker, which finishes its jobs
    in the decoding thread): jobs gather until ``flush()``, called once per batch, so no
    thread competes with the decode for the cores.
    """

    def __init__(self, worker: Any, after: Callable[[Completed], None], attempts: int = 4, *,
                 threaded: bool = True) -> None:  # fmt: skip
        self.worker = worker
        self.after = after
        self.attempts = max(1, attempts)
        self._queue: queue.Queue[Completed | None] = queue.Queue()
        self._gathered: list[Completed] = []
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="latentq-commit", daemon=True)
            self._thread.start()

    def submit(self, item: Completed) -> None:
        if self._thread is None:
            self._gathered.append(item)
        else:
            self._queue.put(item)

    def flush(self) -> None:
        """In line: commit what gathered since the last flush (threaded: nothing to do)."""
        while self._gathered:
            items, self._gathered = self._gathered[:MAX_COMMIT], self._gathered[MAX_COMMIT:]
            self._commit_with_retries(items)

    def close(self, timeout: float = 60.0) -> None:
        """Commit everything submitted so far, then stop."""
        self.flush()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            items = [] if first is None else [first]
            stopping = first is None
            while len(items) < MAX_COMMIT:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                items.append(more)
            if items:
                self._commit_with_retries(items)
            if stopping:
                return

    def _commit_with_retries(self, items: list[Completed]) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                self._commit(items)
                break
            except Exception:
                if attempt == self.attempts:
                    log.exception("could not mark %d finished jobs finished", len(items))
                    self.worker.commit_failed(items)
                    return
                time.sleep(0.1 * 2 ** (attempt - 1))
        for item in items:
            try:
                self.after(item)
            except Exception:
                log.exception("after-commit step of job %s failed", item.job.id)

    def _commit(self, items: list[Completed]) -> None:
        worker = self.worker
        committed = now()
        metrics = MetricsBatch()
        working = 0.0
        # A transaction, as RQ's own: a job is finished with its result and registry entry, or not at all.
        with worker.connection.pipeline() as pipe:
            for item in items:
                job = item.job
                # As in RQ, a job ends when its work does (here: its output stored), before the bookkeeping.
                ended = job.ended_at = job.ended_at or committed
                job._status = RQStatus.FINISHED
                job._result = item.result
                if job.started_at is not None:
                    working += (ended - job.started_at).total_seconds()
                result_ttl = job.get_result_ttl(worker.default_result_ttl)
                # What RQ's Job._handle_success + cleanup write, less a re-save of the unchanged job
                # fields and the expiry of dependents/dependencies keys that latentq jobs never have.
                pipe.hset(job.key, mapping={"status": RQStatus.FINISHED.value, "ended_at": utcformat(ended)})
                if result_ttl != 0:
                    Result.create(job, Result.Type.SUCCESSFUL, return_value=item.result, ttl=result_ttl,
                                  worker_name=worker.name, pipeline=pipe, execution_id=item.execution.id,
                                  execution_started_at=item.execution.created_at, execution_ended_at=ended)  # fmt: skip
                    job.finished_job_registry.add(job, result_ttl, pipe)
                if result_ttl == 0:
                    job.delete(pipeline=pipe, remove_from_queue=False)
                elif result_ttl is not None and result_ttl > 0:  # negative: kept (persisted at start)
                    pipe.expire(job.key, result_ttl)
                worker.cleanup_execution(job, pipeline=pipe, execution=item.execution)
                pipe.delete(job.kwargs.get("latent_key", keys.latent_key(job.id)))
                latency = (ended - job.enqueued_at).total_seconds() if job.enqueued_at else None
                metrics.status(item.model, "finished")
                metrics.job(item.model, encode_seconds=item.timings.get("encode", 0.0),
                            store_seconds=item.timings.get("store", 0.0), latency_seconds=latency)  # fmt: skip
            pipe.hincrby(worker.key, "successful_job_count", len(items))
            pipe.hincrbyfloat(worker.key, "total_working_time", working)
            pipe.hincrby(worker.stats_key, "finished", len(items))
            metrics.write(pipe)
            worker.write_decode_metrics(pipe)
            for item in items:
                pipe.publish(keys.job_done_channel(item.job.id), "finished")
            pipe.execute()
