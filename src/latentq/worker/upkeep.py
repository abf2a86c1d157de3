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
from typing import Any

from ..state import keys, rqstate
from ..state.fence import renew_leases
from .job_log import log_fields
from .reliable_queue import ReliableQueue

__all__ = ["device_stats", "recover_abandoned", "renew", "run"]

log = logging.getLogger("latentq.worker")


def run(worker: Any, stop: threading.Event) -> None:
    last_recovery = 0.0
    while not stop.wait(worker.heartbeat_interval):
        try:
            renew(worker)
            if any(str(model.device).startswith("cuda") for model in worker.models.values()):
                worker.connection.hset(worker.stats_key, mapping=device_stats(worker.models))  # GPU memory, live
        except Exception:  # Redis unreachable: retried next tick (leases outlive two missed ones)
            log.debug("renewing leases failed", exc_info=True)
        if time.monotonic() - last_recovery >= worker.heartbeat_interval:
            last_recovery = time.monotonic()
            recover_abandoned(worker)


def device_stats(models: dict[str, Any]) -> dict[str, str | int]:
    """The worker's device(s), and on a GPU its memory in bytes (the console's workers table shows them)."""
    devices = sorted({str(model.device) for model in models.values()}) or ["cpu"]
    stats: dict[str, str | int] = {"device": ",".join(devices)}
    cuda = [device for device in devices if device.startswith("cuda")]
    if cuda:
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(cuda[0]))
        stats.update(gpu_memory_used=total - free, gpu_memory_total=total)
    return stats


def renew(worker: Any) -> None:
    """Renew the leases of the jobs in hand, then RQ's heartbeats of those still held.

    A lease that lapsed (the process was frozen or cut off from Redis past it) cannot come back: its
    job is dropped here (marked lost: its outputs are not stored), its execution left to expire, and
    recovery gives it to another worker.
    """

    with worker._active_lock:
        active = dict(worker._active)
    tokens = {job_id: getattr(job, "lease_token", "") for job_id, (job, _) in active.items()}
    held = renew_leases(worker.connection, tokens, worker.lease_ttl_ms)
    for job_id, (job, execution) in active.items():
        if not held.get(job_id):
            log.warning("job %s: lease lapsed; another worker will run it", job_id, extra=log_fields(job))
            with worker._active_lock:
                worker._active.pop(job_id, None)
            worker._lost.add(job_id)
            continue
        worker.maintain_heartbeats(job, execution)


def recover_abandoned(worker: Any) -> None:
    """Re-queue (or fail, when out of retries) the jobs of workers that died or froze, once each.

    Finished and failed registries are pruned too, so entries of expired job records do not pile up
    between RQ's own (10-minute) maintenance runs.
    """
    for queue in worker.queues:
        try:
            lock = keys.recovery_lock(queue.name)
            if not worker.connection.set(lock, worker.name, nx=True, px=int(worker.heartbeat_interval * 1000)):
                continue  # another worker is recovering this queue now
            rqstate.recover_started(queue)
            requeued = ReliableQueue.requeue_orphans(queue, worker.connection,
                                                     int(worker.heartbeat_interval * 3000))  # fmt: skip
            if requeued:
                log.warning("re-queued %d job(s) of %s popped by a worker that died", requeued, queue.name)
            rqstate.prune_registries(queue)
        except Exception:
            log.debug("recovery of %s failed", queue.name, exc_info=True)
