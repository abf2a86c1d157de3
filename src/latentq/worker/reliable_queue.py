"""Dequeueing that never holds a job outside Redis.

RQ pops from one queue with BLMOVE into that queue's intermediate list, so a
worker that dies right after the pop leaves the job where RQ's cleanup finds
it. From several queues at once RQ uses BLPOP, and a job popped by a worker
that dies before marking it started is in no list and no registry: lost.
A decode worker always listens on several queues (high and normal priority,
per model), so here every pop is an LMOVE/BLMOVE of one queue: the queues
are tried in priority order, and while all are empty the worker blocks
briefly on the last (the busiest, normal-priority one) and tries again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from rq import Queue
from rq.exceptions import DequeueTimeout

__all__ = ["ReliableQueue", "IDLE_BLOCK_S"]

IDLE_BLOCK_S = 0.2  # how long an idle worker blocks on one queue before checking the others again


class ReliableQueue(Queue):
    @classmethod
    def dequeue_any(cls, queues: Iterable[Queue], timeout: int | None, connection: Any, job_class: Any = None,
                    serializer: Any = None, death_penalty_class: Any = None) -> tuple[Any, Queue] | None:  # fmt: skip
        queues = list(queues)
        options = dict(connection=connection, job_class=job_class, serializer=serializer,
                       death_penalty_class=death_penalty_class)  # fmt: skip
        if len(queues) == 1:
            return super().dequeue_any(queues, timeout, **options)
        deadline = time.monotonic() + (timeout or 0)
        while True:
            for queue in queues:
                result = super().dequeue_any([queue], None, **options)
                if result is not None:
                    return result
            remaining = deadline - time.monotonic()
            if timeout is None:
                return None
            if remaining <= 0:
                raise DequeueTimeout(timeout, [queue.key for queue in queues])
            try:
                result = super().dequeue_any([queues[-1]], min(remaining, IDLE_BLOCK_S), **options)
            except DequeueTimeout:
                continue
            if result is not None:
                return result
