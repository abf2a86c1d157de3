"""The heartbeat thread of a decode worker: leases, RQ's heartbeats, recovery of other workers' jobs.

Every ``heartbeat_interval`` it renews the leases of the jobs the worker
holds (one Lua call), then RQ's heartbeats of those still held; a lease that
lapsed is given up for good. Then, one worker per queue at a time (a lock in
Redis), it recovers what dead or frozen workers left: RQ's abandoned-job
handling of expired executions, and popped jobs whose lease lapsed before
they started.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from redis import Redis
from rq import Queue
from rq.executions import Execution
from rq.job import Job as RQJob

from ..state import keys, rqstate
from ..state.fence import renew_leases
from ..state.worker_stats import WorkerStats
from .active import ActiveJobs
from .job_log import log_fields
from .model_cache import ModelCache
from .reliable_queue import ReliableQueue

__all__ = ["Upkeep", "UpkeepHost", "device_stats"]

log = logging.getLogger("latentq.worker")


class UpkeepHost(Protocol):
    """What upkeep uses of its worker: RQ's side (its connection, name and queues, the heartbeats of its
    executions), the models it serves (their device's memory, in its stats) and its timings."""

    connection: Redis
    name: str
    queues: list[Queue]
    models: ModelCache
    stats_key: str
    heartbeat_interval: float
    lease_ttl_ms: int

    def maintain_heartbeats(self, job: RQJob, execution: Execution) -> None: ...


class Upkeep:
    """The heartbeat thread (``start``/``stop``); ``renew`` and ``recover_abandoned`` are its two steps."""

    def __init__(self, active: ActiveJobs, host: UpkeepHost) -> None:
        self.active = active
        self.host = host
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latentq-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """The thread ends at its next tick (it is a daemon: never waited for)."""
        self._stop.set()

    def _run(self) -> None:
        host = self.host
        last_recovery = 0.0
        while not self._stop.wait(host.heartbeat_interval):
            try:
                self.renew()
                if any(str(model.device).startswith("cuda") for model in host.models.values()):
                    host.connection.hset(host.stats_key, mapping=device_stats(host.models))  # GPU memory, live
            except Exception:  # Redis unreachable: retried next tick (leases outlive two missed ones)
                log.debug("renewing leases failed", exc_info=True)
            if time.monotonic() - last_recovery >= host.heartbeat_interval:
                last_recovery = time.monotonic()
                self.recover_abandoned()

    def renew(self) -> None:
        """Renew the leases of the jobs in hand, then RQ's heartbeats of those still held.

        A lease that lapsed (the process was frozen or cut off from Redis past it) cannot come back: its
        job is dropped here (marked lost: its outputs are not stored), its execution left to expire, and
        recovery gives it to another worker.
        """
        held_items = self.active.held()
        tokens = {item.id: item.token for item in held_items}
        held = renew_leases(self.host.connection, tokens, self.host.lease_ttl_ms)
        for item in held_items:
            if not held.get(item.id):
                log.warning("job %s: lease lapsed; another worker will run it", item.id, extra=log_fields(item.job))
                self.active.mark_lost(item.id)
                continue
            self.host.maintain_heartbeats(item.job, item.execution)

    def recover_abandoned(self) -> None:
        """Re-queue (or fail, when out of retries) the jobs of workers that died or froze, once each.

        Finished and failed registries are pruned too, so entries of expired job records do not pile up
        between RQ's own (10-minute) maintenance runs.
        """
        host = self.host
        for queue in host.queues:
            try:
                lock = keys.recovery_lock(queue.name)
                if not host.connection.set(lock, host.name, nx=True, px=int(host.heartbeat_interval * 1000)):
                    continue  # another worker is recovering this queue now
                rqstate.recover_started(queue)
                requeued = ReliableQueue.requeue_orphans(queue, host.connection,
                                                         int(host.heartbeat_interval * 3000))  # fmt: skip
                if requeued:
                    log.warning("re-queued %d job(s) of %s popped by a worker that died", requeued, queue.name)
                rqstate.prune_registries(queue)
            except Exception:
                log.debug("recovery of %s failed", queue.name, exc_info=True)


def device_stats(models: ModelCache) -> dict[str, str | int]:
    """The worker's device(s), and on a GPU its memory in bytes (the console's workers table shows them)."""
    devices = sorted({str(model.device) for model in models.values()}) or ["cpu"]
    cuda = [device for device in devices if device.startswith("cuda")]
    memory = None
    if cuda:
        import torch

        memory = torch.cuda.mem_get_info(torch.device(cuda[0]))
    return WorkerStats.device_fields(",".join(devices), memory)
