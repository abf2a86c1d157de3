"""The decode worker: RQ's in-process worker, plus dynamic batching per model.

RQ's loop blocks for the first job (with its heartbeats, maintenance,
suspension and signal handling); ``execute_job`` then starts it and whatever
else waits for that model, up to ``max_batch`` (``intake``). Jobs are decoded
in a shared ``vae.decode`` with same-shape neighbours (``batching``); each is
then encoded and stored (by a thread pool on a GPU, while the next batch
decodes; in line on a CPU), and the committer marks stored jobs finished, many
per Redis transaction (``finishing``, ``completion``). A job that fails is
recorded on its own.

Failure handling: a bad job fails alone and at once; an out-of-memory batch is
split in halves, a single job then falls back to tiled decode; store writes
and Redis updates are retried with backoff.

Each job is done once: the worker holds a lease on every job it popped
(``ActiveJobs``, renewed by the heartbeat thread: ``upkeep``) and starts,
finishes or fails a job only behind that lease (``lifecycle``). A worker that
dies mid-batch, or freezes past its leases, loses them; recovery (one worker
per queue at a time, every few seconds) re-queues its jobs for another worker,
and whatever the lost worker later tries to write for them is refused.

This class holds the worker's settings and RQ's hooks; each hook delegates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from rq import Queue
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from ..core.request import Limits
from ..models.loader import LoadedModel
from ..state import keys
from ..state.worker_stats import WorkerStats
from ..store import ObjectStore
from .active import ActiveJobs
from .batching import Batcher
from .commands import CommandChannel
from .decode_metrics import DecodeMetrics
from .defaults import batch_settings
from .faults import Faults
from .finishing import Finisher
from .intake import Batch, Intake
from .model_cache import ModelCache
from .reliable_queue import ReliableQueue
from .upkeep import Upkeep, device_stats

__all__ = ["DecodeWorker"]

log = logging.getLogger("latentq.worker")

SUSPENSION_CHECK_S = 1.0  # how often the work loop reads RQ's suspension flag


class DecodeWorker(SimpleWorker):
    """Serves a high and a normal queue per loaded model; never forks, keeps models warm.

    Its parts: ``intake`` (starts a batch), ``active`` (the jobs held and their leases), ``batcher`` (decodes
    a batch), ``finisher`` (stores, commits and fails jobs; the encode pool) and ``upkeep`` (the heartbeat
    thread).
    """

    def __init__(
        self,
        models: dict[str, LoadedModel] | ModelCache,
        connection: Redis,
        store: ObjectStore,
        *,
        max_batch: int | None = None,
        max_wait_ms: float = 5.0,
        max_batch_pixels: int | None = -1,  # -1: the device's default; None: no pixel budget
        encode_threads: int | None = None,
        limits: Limits | None = None,
        name: str | None = None,
        heartbeat_interval: float = 5.0,
        previews: dict[str, LoadedModel] | None = None,
        store_attempts: int = 4,
        url_for: Callable[[str], str | None] | None = None,
    ) -> None:
        self._last_beat = 0.0
        self._commands: CommandChannel | None = None  # RQ's command channel, ours from bootstrap to teardown
        self._suspension_checked = -SUSPENSION_CHECK_S
        # A dict is every model loaded and kept; a ModelCache (latentq worker) may hold only some at a time.
        models = models if isinstance(models, ModelCache) else ModelCache.of(models)
        names = [keys.high_priority_queue_name(m) for m in models] + [keys.queue_name(m) for m in models]
        queues = [ReliableQueue(name, connection=connection, serializer=JSONSerializer) for name in names]
        # A short worker TTL makes a dead worker disappear from `rq info` and model status soon.
        # log_job_description off: RQ logs each popped job before its record is read (see intake).
        super().__init__(queues, connection=connection, serializer=JSONSerializer, name=name, worker_ttl=30,
                         queue_class=ReliableQueue, log_job_description=False)  # fmt: skip
        on_gpu = models.device.startswith("cuda") or any(str(m.device).startswith("cuda") for m in models.values())
        max_batch, max_batch_pixels, encode_threads = batch_settings(on_gpu, max_batch, max_batch_pixels,
                                                                     encode_threads)  # fmt: skip
        self.models = models
        self.previews = previews or {}  # served model -> its tiny preview decoder
        self.store = store
        self.max_batch = max_batch
        self.max_batch_pixels = max_batch_pixels
        self.encode_threads = encode_threads
        self.max_wait = max(0.0, max_wait_ms) / 1000
        self.limits = limits or Limits()
        # Result URLs in webhooks: the deployment's (latentq worker passes them); a bare local store has
        # none (its own would be a file:// path, meaningless to the receiver).
        self.url_for = url_for or (store.url if not store.served_by_api else (lambda key: None))
        self.heartbeat_interval = heartbeat_interval
        # Executions expire this long after the last heartbeat: the bound on noticing a dead worker.
        self.execution_ttl = int(max(10, 3 * heartbeat_interval))
        self.job_monitoring_interval = int(max(1, heartbeat_interval))
        # A lease lapses before its execution does: RQ scores executions in whole seconds (up to 1 s early),
        # and a job re-queued by RQ's cleanup must find its old lease gone.
        self.lease_ttl_ms = (self.execution_ttl - 2) * 1000
        for queue in self.queues:
            queue.lease_ttl_ms = self.lease_ttl_ms  # type: ignore[attr-defined]
        self.stats_key = keys.worker_stats_key(self.name)
        faults = Faults.from_env()
        decode_metrics = DecodeMetrics(self.models, self.stats_key)
        self.active = ActiveJobs()
        self.intake = Intake(self)
        # Jobs end fenced by their lease, retried while it may hold; the pending outputs (decoded, not yet
        # stored) are bounded.
        self.finisher = Finisher(self, store, self.active, decode_metrics, faults, store_attempts=store_attempts,
                                 retry_for_s=self.execution_ttl, encode_threads=encode_threads,
                                 device=models.device, pending=max(2 * max_batch, 2 * encode_threads))  # fmt: skip
        self.batcher = Batcher(self, self.finisher, decode_metrics, faults)
        self.upkeep = Upkeep(self.active, self)

    # --- RQ hooks -------------------------------------------------------------
    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        self.connection.hset(self.stats_key, mapping=WorkerStats.identity(list(self.models), self.max_batch,
                                                                          device_stats(self.models)))  # fmt: skip
        self.upkeep.start()

    def subscribe(self) -> None:
        # RQ's own listener stops with a join that redis-py may stretch to its 60 s poll: ours is bounded.
        self._commands = CommandChannel(self.connection, self.pubsub_channel_name, self.handle_payload)
        self._commands.start()

    def unsubscribe(self) -> None:
        if self._commands is not None and not self._commands.stop():
            log.warning("worker %s: the command listener did not stop in time; left to exit with the process",
                        self.name)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        # RQ beats before and after every job, three round trips each time. The worker key
        # outlives worker_ttl + 60 s, so one beat a second, in one round trip, is plenty.
        if pipeline is not None:
            return super().heartbeat(timeout, pipeline)
        if timeout is None and time.monotonic() - self._last_beat < 1.0:
            return None
        self._last_beat = time.monotonic()
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipe)
            pipe.execute()
        return None

    def check_for_suspension(self, burst: bool) -> None:
        # RQ reads the suspension flag before every pop: one round trip per batch. Once a second is
        # enough for `rq suspend` to take effect.
        if self._commands is not None:  # RQ's loop has begun: its signal handlers are in place for a shutdown command
            self._commands.accept()
        if time.monotonic() - self._suspension_checked < SUSPENSION_CHECK_S:
            return
        self._suspension_checked = time.monotonic()
        super().check_for_suspension(burst)

    def get_heartbeat_ttl(self, job: RQJob, working_time: float = 0.0) -> int:
        return self.execution_ttl

    def execute_job(self, job: RQJob, queue: Queue) -> None:
        batch = self.take(job, queue)
        try:
            self.batcher.run(batch)  # RQ marks the worker idle before its next pop
        finally:
            self.finisher.flush()

    def teardown(self) -> None:
        # Warm shutdown: encode and store everything decoded before leaving.
        self.finisher.close()
        self.upkeep.stop()
        try:
            super().teardown()
            self.connection.expire(self.stats_key, 3600)
        except Exception as exc:  # Redis is gone: its worker key expires by itself (worker_ttl)
            log.warning("could not unregister worker %s: %s", self.name, exc)

    # --- what its parts use ---------------------------------------------------
    def take(self, job: RQJob, queue: Queue) -> Batch:
        """Start the popped job and what waits behind it; their leases are renewed from now on."""
        batch = self.intake.take(job, queue)
        self.active.add(batch.items)
        return batch

    def model_queues(self, model: str) -> list[Queue]:
        """The model's queues in the order they are served: high priority first."""
        return [q for q in self.queues if keys.model_from_queue(q.name) == model]
