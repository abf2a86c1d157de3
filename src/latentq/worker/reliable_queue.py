"""Dequeueing that never holds a job outside Redis.

RQ pops from one queue with BLMOVE into that queue's intermediate list, so a
worker that dies right after the pop leaves the job where RQ's cleanup finds
it. From several queues at once RQ uses BLPOP, and a job popped by a worker
that dies before marking it started is in no list and no registry: lost.
A decode worker always listens on several queues (high and normal priority,
per model), so here every pop is an LMOVE/BLMOVE of one queue: the queues
are tried in priority order, and while all are empty the worker blocks
briefly on the last (the busiest, normal-priority one) and tries again.
Filling a batch pops many jobs in one round trip (``pop_many``), with the
same LMOVE into the intermediate lists, so a dying worker loses none.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from rq import Queue
from rq.exceptions import DequeueTimeout
from rq.utils import as_text

__all__ = ["ReliableQueue", "IDLE_BLOCK_S"]

IDLE_BLOCK_S = 0.2  # how long an idle worker blocks on one queue before checking the others again

# KEYS: queue, its intermediate list, queue, ...  ARGV[1]: most ids to move. Returns id, key index pairs.
_POP_MANY = """
local wanted = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS, 2 do
  while #out < 2 * wanted do
    local id = redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'LEFT', 'RIGHT')
    if not id then break end
    out[#out + 1] = id
    out[#out + 1] = i
  end
end
return out
"""


class ReliableQueue(Queue):
    @classmethod
    def dequeue_any(cls, queues: Iterable[Queue], timeout: int | None, connection: Any, job_class: Any = None,
                    serializer: Any = None, death_penalty_class: Any = None) -> tuple[Any, Queue] | None:  # fmt: skip
        """RQ's pop (same signature), always by LMOVE/BLMOVE of one queue at a time.

        The popped job comes back as its id only (its record is not read here): the decode
        worker reads it in the same round trip that marks it started (see ``intake``).
        """
        queues = list(queues)
        deadline = time.monotonic() + (timeout or 0)
        while True:
            for queue in queues:
                result = cls._take(queue, None, connection, job_class, serializer)
                if result is not None:
                    return result
            remaining = deadline - time.monotonic()
            if timeout is None:
                return None
            if remaining <= 0:
                raise DequeueTimeout(timeout, [queue.key for queue in queues])
            try:
                # Idle: block on the last queue (the busiest, normal-priority one) a short while.
                result = cls._take(queues[-1], min(remaining, IDLE_BLOCK_S), connection, job_class, serializer)
            except DequeueTimeout:
                continue
            if result is not None:
                return result

    @classmethod
    def _take(cls, queue: Queue, timeout: float | None, connection: Any, job_class: Any,
              serializer: Any) -> tuple[Any, Queue] | None:  # fmt: skip
        popped = cls.lmove(connection, queue.key, timeout)  # type: ignore[arg-type]
        if popped is None:
            return None
        job = (job_class or queue.job_class)(as_text(popped[1]), connection=connection, serializer=serializer)
        job.origin = queue.name
        return job, queue

    @classmethod
    def pop_many(cls, queues: list[Queue], count: int, connection: Any, job_class: Any = None,
                 serializer: Any = None) -> list[tuple[Any, Queue]]:  # fmt: skip
        """Up to ``count`` jobs from the queues in priority order, moved and fetched in two round trips."""
        if count <= 0 or not queues:
            return []
        keys = [key for queue in queues for key in (queue.key, queue.intermediate_queue_key)]
        popped = connection.eval(_POP_MANY, len(keys), *keys, count)
        pairs = [(popped[i].decode(), queues[(int(popped[i + 1]) - 1) // 2]) for i in range(0, len(popped), 2)]
        if not pairs:
            return []
        job_class = job_class or queues[0].job_class
        jobs = job_class.fetch_many([job_id for job_id, _ in pairs], connection=connection, serializer=serializer)
        # A job whose record is gone is skipped, as RQ's dequeue does; its id is dropped from the intermediate list.
        found, gone = [], []
        for job, (job_id, queue) in zip(jobs, pairs):
            (found if job is not None else gone).append((job, queue) if job is not None else (job_id, queue))
        for job_id, queue in gone:
            connection.lrem(queue.intermediate_queue_key, 1, job_id)
        return found
