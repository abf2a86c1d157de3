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

Every pop also takes the job's lease (``keys.lease_key``): a token of this
pop, with a TTL the worker's heartbeat renews. The lease fences the job's
start and end (``fence``), and tells recovery which popped jobs still have a
live worker: ``requeue_orphans`` puts back the others as soon as their lease
lapses (the heartbeat bound), not after RQ's fixed minute.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

from rq import Queue
from rq.exceptions import DequeueTimeout
from rq.utils import as_text

from ..state import keys
from ..state.fence import run_script

__all__ = ["IDLE_BLOCK_S", "LEASE_TTL_MS", "ReliableQueue"]

LEASE_TTL_MS = 15_000  # the worker sets its own (3 heartbeats) on its queues

IDLE_BLOCK_S = 0.2  # how long an idle worker blocks on one queue before checking the others again

# A lease is only taken, never taken over: an id whose job another pop holds (a copy a recovery put back
# while its popper was still taking it) is left in the intermediate list, where recovery decides about it
# once that lease is gone (started by its holder: dropped; still waiting: back in its queue).
_POP_MANY = """
-- Pop up to ARGV[1] ids from the queues in order, each moved to its queue's intermediate list with its lease.
-- KEYS[1..n] = pairs, in priority order, for i = 1, 3, 5, ...: KEYS[i] = an RQ queue (list rq:queue:<name>),
--              KEYS[i + 1] = its intermediate list (RQ's rq:queue:<name>:intermediate)
-- ARGV[1] = the most ids to move
-- ARGV[2] = this pop's lease token
-- ARGV[3] = lease TTL in ms
-- ARGV[4] = the lease key prefix (latentq:lease:)
-- Not in KEYS: each popped job's lease (ARGV[4] .. id): which ids are popped only the LMOVE here decides, so
-- they cannot be named before the script runs.
-- Returns id, KEYS index of its queue, per id popped.
local wanted = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS, 2 do
  while #out < 2 * wanted do
    local id = redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'LEFT', 'RIGHT')
    if not id then break end
    if redis.call('SET', ARGV[4] .. id, ARGV[2], 'NX', 'PX', ARGV[3]) then
      out[#out + 1] = id
      out[#out + 1] = i
    end
  end
end
return out
"""

# A popped id without a lease, seen so on an earlier look too (a blocking pop takes the lease just after its
# move), whose job still waits, lost its worker before the start: back to the head of its queue. Ids of jobs
# that started, ended or vanished are leftovers: dropped.
_REQUEUE_ORPHANS = """
-- Put back popped jobs whose popper died before starting them; drop leftovers of the intermediate list.
-- KEYS[1] = an RQ queue (list rq:queue:<name>)
-- KEYS[2] = its intermediate list (RQ's rq:queue:<name>:intermediate)
-- ARGV[1] = the lease key prefix (latentq:lease:)
-- ARGV[2] = RQ's job key prefix (rq:job:)
-- ARGV[3] = the orphan mark prefix (latentq:orphan:)
-- ARGV[4] = the orphan mark's TTL (ms)
-- Not in KEYS: per id in KEYS[2], its lease (ARGV[1] .. id), job record (ARGV[2] .. id) and orphan mark
-- (ARGV[3] .. id): the ids are read here (LRANGE of KEYS[2]), and naming them before the script runs would
-- mean reading the list outside the script's atomicity (a pop or a start could come between).
-- Returns {how many went back, how many were seen without a lease for the first time}.
local requeued, marked = 0, 0
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then
    if redis.call('HGET', ARGV[2] .. id, 'status') ~= 'queued' then
      redis.call('LREM', KEYS[2], 1, id)
    elseif redis.call('SET', ARGV[3] .. id, '1', 'NX', 'PX', ARGV[4]) then
      marked = marked + 1
    else
      redis.call('LREM', KEYS[2], 1, id)
      redis.call('DEL', ARGV[3] .. id)
      redis.call('LPUSH', KEYS[1], id)
      requeued = requeued + 1
    end
  end
end
return {requeued, marked}
"""

ORPHAN_SECOND_LOOK_S = 0.1  # far longer than a blocking pop takes between its move and its lease


def new_token() -> str:
    """One pop's lease token."""
    return uuid.uuid4().hex


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
            result = cls._take_first(queues, connection, job_class, serializer)
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

    lease_ttl_ms: int = LEASE_TTL_MS

    @classmethod
    def _take(cls, queue: Queue, timeout: float | None, connection: Any, job_class: Any,
              serializer: Any) -> tuple[Any, Queue] | None:  # fmt: skip
        """One job: by Lua with its lease at once, or by BLMOVE (blocking), its lease claimed when it starts."""
        if timeout is None:
            return cls._take_first([queue], connection, job_class, serializer)
        moved = cls.lmove(connection, queue.key, timeout)  # type: ignore[arg-type]
        if moved is None:
            return None
        job = (job_class or queue.job_class)(as_text(moved[1]), connection=connection, serializer=serializer)
        job.origin = queue.name
        job.lease_token = new_token()
        # A blocking pop takes its lease in the start (a "claim"): one round trip less on an idle worker.
        job.lease_claim = True
        return job, queue

    @classmethod
    def _take_first(cls, queues: list[Queue], connection: Any, job_class: Any,
                    serializer: Any) -> tuple[Any, Queue] | None:  # fmt: skip
        """One job from the first of ``queues`` (priority order) that has one, with its lease: one round trip
        whatever the number of queues (a worker listens on two per model)."""
        if not queues:
            return None
        list_keys = [key for queue in queues for key in (queue.key, queue.intermediate_queue_key)]
        token = new_token()
        ttl = getattr(queues[0], "lease_ttl_ms", LEASE_TTL_MS)
        popped = run_script(connection, _POP_MANY, len(list_keys), *list_keys, 1, token, ttl, keys.LEASE_PREFIX)
        if not popped:
            return None
        queue = queues[(int(popped[1]) - 1) // 2]
        job = (job_class or queue.job_class)(as_text(popped[0]), connection=connection, serializer=serializer)
        job.origin = queue.name
        job.lease_token = token
        job.lease_claim = False
        return job, queue

    @staticmethod
    def requeue_orphans(queue: Queue, connection: Any, mark_ttl_ms: int = 15_000) -> int:
        """Popped jobs whose popper died before starting them go back to the head of their queue.

        An id is put back when a second look, a moment after the first, still finds it without a lease,
        so a pop between its move and its lease is never mistaken for a dead one.
        """
        args = (connection, _REQUEUE_ORPHANS, 2, queue.key, queue.intermediate_queue_key, keys.LEASE_PREFIX,
                queue.job_class.redis_job_namespace_prefix, keys.ORPHAN_PREFIX, mark_ttl_ms)  # fmt: skip
        requeued, marked = run_script(*args)
        if marked:
            time.sleep(ORPHAN_SECOND_LOOK_S)
            requeued += run_script(*args)[0]
        return int(requeued)

    @classmethod
    def pop_many(cls, queues: list[Queue], count: int, connection: Any, job_class: Any = None,
                 serializer: Any = None) -> list[tuple[Any, Queue]]:  # fmt: skip
        """Up to ``count`` jobs from the queues in priority order, moved and fetched in two round trips."""
        if count <= 0 or not queues:
            return []
        list_keys = [key for queue in queues for key in (queue.key, queue.intermediate_queue_key)]
        token = new_token()
        ttl = getattr(queues[0], "lease_ttl_ms", LEASE_TTL_MS)
        popped = run_script(connection, _POP_MANY, len(list_keys), *list_keys, count, token, ttl, keys.LEASE_PREFIX)
        pairs = [(popped[i].decode(), queues[(int(popped[i + 1]) - 1) // 2]) for i in range(0, len(popped), 2)]
        if not pairs:
            return []
        job_class = job_class or queues[0].job_class
        jobs = job_class.fetch_many([job_id for job_id, _ in pairs], connection=connection, serializer=serializer)
        # A job whose record is gone is skipped, as RQ's dequeue does; its id is dropped from the intermediate list.
        found, gone = [], []
        for job, (job_id, queue) in zip(jobs, pairs):
            if job is None:
                gone.append((job_id, queue))
                continue
            job.origin = queue.name
            job.lease_token = token
            found.append((job, queue))
        if gone:
            with connection.pipeline(transaction=False) as pipe:
                for job_id, queue in gone:
                    pipe.lrem(queue.intermediate_queue_key, 1, job_id)
                    pipe.delete(keys.lease_key(job_id))
                pipe.execute()
        return found
