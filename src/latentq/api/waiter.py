"""Long-polls (``GET /v1/jobs/{id}?wait=S``) that wait in the event loop, not on a thread.

The process's one :class:`~latentq.producer.waiter.DoneListener` (the API's
job service owns it; the remote-decode routes' waits share it) signals "job X
ended" into the loop; the re-checks in between are async reads from a bounded,
reused pool. A waiting request holds no thread and no connection of its own,
so thousands can wait while threads serve submits.
"""

from __future__ import annotations

import asyncio
import time

from redis import asyncio as aioredis
from rq.job import Job as RQJob

from ..producer.waiter import RECHECK_S, DoneListener, has_ended
from ..state.connection import async_redis_from_url

__all__ = ["ASYNC_CONNECTIONS", "LongPolls"]

ASYNC_CONNECTIONS = 16  # the event loop's reads (re-checks, health) share this many connections


class LongPolls:
    """``await long_polls.until_ended(job_id, timeout, deadline)``; also the API's async Redis client."""

    def __init__(self, listener: DoneListener, redis_url: str) -> None:
        self._listener = listener
        self._redis_url = redis_url
        self._redis: aioredis.Redis | None = None
        self.waiting = 0  # long-polls in progress (reported by /healthz)

    @property
    def redis(self) -> aioredis.Redis:
        # Made in the serving loop on first use: asyncio connections belong to one loop.
        if self._redis is None:
            self._redis = async_redis_from_url(self._redis_url, max_connections=ASYNC_CONNECTIONS)
        return self._redis

    async def ping(self) -> None:
        await self.redis.ping()

    async def until_ended(self, job_id: str, timeout: float, deadline: float | None = None) -> bool:
        """Return once the job has ended (True) or ``timeout`` s have passed (False).

        Redis errors propagate (the API answers 503); the listener wakes every
        waiter when its connection drops, so a long-poll learns of an outage at once.
        """
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def wake() -> None:  # on the listener's thread
            try:
                loop.call_soon_threadsafe(woken.set)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass

        until = loop.time() + timeout
        self.waiting += 1
        try:
            with self._listener.watch(job_id, wake):
                while True:
                    # Read after registering, so an end published meanwhile is not missed.
                    if has_ended(await self.redis.hget(RQJob.key_for(job_id), "status"), deadline):
                        return True
                    remaining = until - loop.time()
                    if remaining <= 0:
                        return False
                    pause = min(remaining, RECHECK_S)
                    if deadline is not None:  # a queued job past its deadline ends (expires) when read
                        pause = max(0.0, min(pause, deadline - time.time() + 0.01))
                    try:
                        await asyncio.wait_for(woken.wait(), pause)
                    except TimeoutError:
                        pass
                    woken.clear()
        finally:
            self.waiting -= 1

    async def aclose(self) -> None:
        redis, self._redis = self._redis, None
        if redis is not None:
            await redis.aclose()
