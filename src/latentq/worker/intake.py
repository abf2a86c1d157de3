"""Taking a batch: from the job RQ's loop popped to started jobs with their latents.

Round trips, not CPU, are what a queued job costs at light load, so the
popped job comes as an id only (``ReliableQueue`` does not fetch it): one
pipeline then reads its record and its latent, marks it started in RQ and
reads how many jobs wait behind it. Only when some do does the worker pop
more (one Lua call moves up to max_batch ids into RQ's intermediate lists,
one pipeline reads their records) and start them in one more pipeline.

The start is fenced (``fence``, kind "start"): a job is started only while
its lease holds this pop's token and it is still queued, atomically, so a
worker that froze after its pop cannot start a job that recovery gave to
another worker meanwhile, or one that was canceled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis import Redis
from rq import Queue
from rq.executions import Execution
from rq.job import Job as RQJob

from ..state import keys, rqstate
from ..state.fence import APPLIED, GONE, Fenced, apply, capture, captured
from ..state.payload import latent_key_of
from .reliable_queue import ReliableQueue
from .work_item import WorkItem

__all__ = ["Batch", "Intake", "IntakeHost"]


class IntakeHost(Protocol):
    """What the intake uses of its worker: RQ's worker as a start writes it (its connection, name, job class
    and serializer, its busy state and its executions), its model's queues and the batching settings (read
    at each take)."""

    connection: Redis
    name: str
    job_class: type[RQJob]
    serializer: Any
    executions: dict[str, Execution]
    max_batch: int
    max_wait: float
    execution_ttl: int
    lease_ttl_ms: int

    def model_queues(self, model: str) -> list[Queue]: ...

    def set_state(self, state: str, pipeline: Any = None) -> None: ...


@dataclass
class Batch:
    """Started jobs, each with its queue, its RQ execution, its lease and its input's bytes (None: gone)."""

    items: list[WorkItem] = field(default_factory=list)

    @property
    def jobs(self) -> list[RQJob]:
        return [item.job for item in self.items]


class Intake:
    def __init__(self, host: IntakeHost) -> None:
        self.host = host

    def take(self, first: RQJob, queue: Queue) -> Batch:
        """The popped job plus what else waits for its model (high priority first), up to max_batch, started.

        The batching window (``max_wait``) opens only when more than one job was waiting: a
        burst is arriving and more of it may follow. A lone job at light load is decoded at
        once; under steady load jobs pile up while a batch decodes, and batches form anyway.
        """
        host = self.host
        model_queues = host.model_queues(keys.model_from_queue(queue.name) or "")
        batch, waiting = self._start_popped(first, queue, model_queues)
        if not waiting or host.max_batch <= 1:
            return batch
        wanted = host.max_batch - len(batch.items)
        popped = self._pop(model_queues, wanted)
        if popped and len(popped) < wanted:
            deadline = time.monotonic() + host.max_wait
            while len(popped) < wanted and (remaining := deadline - time.monotonic()) > 0:
                time.sleep(min(0.001, remaining))
                popped += self._pop(model_queues, wanted - len(popped))
        if popped:
            batch.items += self._start([job for job, _ in popped], {job.id: q for job, q in popped})[0].items
        return batch

    def _pop(self, queues: list[Queue], count: int) -> list[tuple[RQJob, Queue]]:
        host = self.host
        return ReliableQueue.pop_many(queues, count, host.connection, job_class=host.job_class,
                                      serializer=host.serializer)  # fmt: skip

    def _start_popped(self, job: RQJob, queue: Queue, model_queues: list[Queue]) -> tuple[Batch, int]:
        """Fetch, start and read the latent of the job popped as an id, in one round trip.

        Returns the batch (empty when the job is gone or no longer ours) and how many jobs wait in its
        model's queues.
        """
        batch, fetched, depths = self._start([job], {job.id: queue}, fetch=True, depth_of=model_queues)
        if not batch.items:
            return batch, sum(depths)
        rqstate.job_from_record(job, fetched[job.id])
        latent_key = latent_key_of(job.id, job.kwargs)
        if latent_key != keys.latent_key(job.id):  # a job enqueued by other means, with its own key
            batch.items[0].blob = self.host.connection.get(latent_key)
        return batch, sum(depths)

    def _start(self, jobs: list[RQJob], queues: dict[str, Queue], *, fetch: bool = False,
               depth_of: list[Queue] | None = None) -> tuple[Batch, dict[str, dict], list[int]]:  # fmt: skip
        """Mark jobs started in RQ and read their latents, fenced, in one round trip.

        With ``fetch`` the jobs' records are read too (before the start's writes), returned by id with
        the lengths of ``depth_of``. Jobs refused by their fence are left out of the batch: no longer
        ours (recovery re-queued them, or they were canceled). Jobs gone from Redis are cleaned up.
        """
        host = self.host
        connection = host.connection
        ttl = host.execution_ttl
        busy = capture(connection)
        rqstate.worker_busy_writes(host, busy)
        items, executions = [Fenced("", "", "none", writes=captured(busy))], {}
        for job in jobs:
            pipe = capture(connection)
            executions[job.id] = rqstate.start_writes(host, job, queues[job.id], ttl, pipe)
            latent = keys.latent_key(job.id) if fetch else latent_key_of(job.id, job.kwargs)
            reads = ([("HGETALL", job.key)] if fetch else []) + [("GET", latent)]
            kind = "claim" if getattr(job, "lease_claim", False) else "start"
            items.append(Fenced(job.id, job.key, kind, getattr(job, "lease_token", ""), captured(pipe), reads,
                                ttl_ms=host.lease_ttl_ms))  # fmt: skip
        depth_reads = [("LLEN", queue.key) for queue in depth_of or []]
        results, depths = apply(connection, items, depth_reads)
        batch, fetched, gone = Batch(), {}, []
        for job, (code, reads) in zip(jobs, results[1:]):
            if code == APPLIED:
                execution = executions[job.id]
                host.executions[execution.id] = execution
                batch.items.append(WorkItem(job, queues[job.id], execution, getattr(job, "lease_token", ""),
                                            blob=reads[-1]))  # fmt: skip
                if fetch:
                    raw = reads[0]
                    fetched[job.id] = {raw[i]: raw[i + 1] for i in range(0, len(raw), 2)}
            elif code == GONE:  # deleted or expired between the push and the pop: skipped, as RQ's dequeue does
                gone.append(job)
        if gone:
            with connection.pipeline(transaction=False) as pipe:
                for job in gone:
                    pipe.delete(keys.latent_key(job.id), keys.lease_key(job.id))
                    pipe.lrem(queues[job.id].intermediate_queue_key, 1, job.id)
                pipe.execute()
        return batch, fetched, [int(depth) for depth in depths]
