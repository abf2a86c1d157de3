"""Taking a batch: from the job RQ's loop popped to started jobs with their latents.

Round trips, not CPU, are what a queued job costs at light load, so the
popped job comes as an id only (``ReliableQueue`` does not fetch it): one
pipeline then reads its record and its latent, marks it started in RQ and
reads how many jobs wait behind it. Only when some do does the worker pop
more (one Lua call moves up to max_batch ids into RQ's intermediate lists,
one pipeline reads their records) and start them in one more pipeline.

The start writes are RQ's own (``prepare_execution`` + ``prepare_job_execution``),
pipelined without MULTI: a worker that dies halfway leaves an execution that
expires or an id in an intermediate list, and RQ's cleanup re-queues the job
either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rq import Queue
from rq.executions import Execution
from rq.job import Job as RQJob
from rq.worker import WorkerStatus

from .. import keys
from .reliable_queue import ReliableQueue

__all__ = ["Batch", "Intake"]


@dataclass
class Batch:
    """Started jobs, each with its queue, its RQ execution and its latent's bytes (None: gone)."""

    jobs: list[RQJob] = field(default_factory=list)
    queues: dict[str, Queue] = field(default_factory=dict)
    executions: dict[str, Execution] = field(default_factory=dict)
    blobs: list[bytes | None] = field(default_factory=list)

    def extend(self, other: Batch) -> None:
        self.jobs += other.jobs
        self.queues.update(other.queues)
        self.executions.update(other.executions)
        self.blobs += other.blobs


class Intake:
    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def take(self, first: RQJob, queue: Queue) -> Batch:
        """The popped job plus what else waits for its model (high priority first), up to max_batch, started.

        The batching window (``max_wait``) opens only when more than one job was waiting: a
        burst is arriving and more of it may follow. A lone job at light load is decoded at
        once; under steady load jobs pile up while a batch decodes, and batches form anyway.
        """
        worker = self.worker
        model_queues = worker.model_queues(keys.model_from_queue(queue.name) or "")
        batch, waiting = self._start_popped(first, queue, model_queues)
        if not waiting or worker.max_batch <= 1:
            return batch
        wanted = worker.max_batch - len(batch.jobs)
        popped = self._pop(model_queues, wanted)
        if popped and len(popped) < wanted:
            deadline = time.monotonic() + worker.max_wait
            while len(popped) < wanted and (remaining := deadline - time.monotonic()) > 0:
                time.sleep(min(0.001, remaining))
                popped += self._pop(model_queues, wanted - len(popped))
        if popped:
            batch.extend(self._start([job for job, _ in popped], {job.id: q for job, q in popped})[0])
        return batch

    def _pop(self, queues: list[Queue], count: int) -> list[tuple[RQJob, Queue]]:
        worker = self.worker
        return ReliableQueue.pop_many(queues, count, worker.connection, job_class=worker.job_class,
                                      serializer=worker.serializer)  # fmt: skip

    def _start_popped(self, job: RQJob, queue: Queue, model_queues: list[Queue]) -> tuple[Batch, int]:
        """Fetch, start and read the latent of the job popped as an id, in one round trip.

        Returns the batch (empty when the job's record was gone) and how many jobs wait in its model's queues.
        """
        batch, fetched = self._start([job], {job.id: queue}, fetch=True, depth_of=model_queues)
        raw, depths = fetched[0], fetched[1:]
        if not raw:  # deleted or expired between the push and the pop: undo the start, as RQ would skip it
            worker = self.worker
            with worker.connection.pipeline(transaction=False) as pipe:
                worker.cleanup_execution(job, pipeline=pipe, execution=batch.executions[job.id])
                pipe.delete(job.key, keys.latent_key(job.id))
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)
                pipe.execute()
            return Batch(), sum(depths)
        written = (job.worker_name, job.last_heartbeat, job.started_at, job.get_status(refresh=False))
        job.restore(raw)  # the record as it was before the start's writes: put those back
        job.worker_name, job.last_heartbeat, job.started_at, job._status = written
        latent_key = job.kwargs.get("latent_key", keys.latent_key(job.id))
        if latent_key != keys.latent_key(job.id):  # a job enqueued by other means, with its own key
            batch.blobs = [self.worker.connection.get(latent_key)]
        return batch, sum(depths)

    def _start(self, jobs: list[RQJob], queues: dict[str, Queue], *, fetch: bool = False,
               depth_of: list[Queue] | None = None) -> tuple[Batch, list[Any]]:  # fmt: skip
        """Mark jobs started in RQ and read their latents in one pipeline.

        With ``fetch`` the pipeline first reads the jobs' records and the lengths of ``depth_of``,
        returned beside the batch; the records are read before the start's writes land.
        """
        worker = self.worker
        ttl = worker.execution_ttl
        batch = Batch(jobs=list(jobs), queues=dict(queues))
        depth_of = depth_of or []
        with worker.connection.pipeline(transaction=False) as pipe:
            if fetch:
                for job in jobs:
                    pipe.hgetall(job.key)
                for queue in depth_of:
                    pipe.llen(queue.key)
            worker.set_state(WorkerStatus.BUSY, pipeline=pipe)
            for job in jobs:
                execution = Execution.create(job, ttl, pipeline=pipe, worker_name=worker.name)
                worker.executions[execution.id] = execution
                batch.executions[job.id] = execution
                job.prepare_for_execution(worker.name, pipeline=pipe)  # sets last_heartbeat too
                pipe.persist(job.key)
                pipe.lrem(queues[job.id].intermediate_queue_key, 1, job.id)
            latent_keys = [keys.latent_key(job.id) if fetch else job.kwargs.get("latent_key", keys.latent_key(job.id))
                           for job in jobs]  # fmt: skip
            pipe.mget(latent_keys)
            replies = pipe.execute()
        batch.blobs = replies[-1]
        return batch, replies[: len(jobs) + len(depth_of)] if fetch else []
