"""The decode worker: RQ's in-process worker, plus dynamic batching per model.

RQ's loop blocks for the first job (with its heartbeats, maintenance,
suspension and signal handling); ``execute_job`` then takes whatever else is
waiting on that model's queue, up to ``max_batch``, waiting at most
``max_wait_ms`` from the first. Each job is marked started in RQ, decoded in
a shared ``vae.decode`` with same-shape neighbours, and handed to a thread
pool that encodes, stores and records its own success or failure, while the
main thread goes back for the next batch.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from redis import Redis
from rq import Queue
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import SimpleWorker

from .. import keys
from ..errors import InvalidRequest, LatentqError
from ..models.loader import LoadedModel
from ..spec import DecodeRequest, Limits
from ..store import ObjectStore
from .faults import Faults
from .pipeline import DecodedImage, decode_group, decode_preview, group_for_decode, load_latent, store_output

__all__ = ["DecodeWorker"]

log = logging.getLogger("latentq.worker")


class DecodeWorker(SimpleWorker):
    """Serves one queue per loaded model; never forks, keeps models warm."""

    def __init__(
        self,
        models: dict[str, LoadedModel],
        connection: Redis,
        store: ObjectStore,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        encode_threads: int = 4,
        limits: Limits | None = None,
        name: str | None = None,
        heartbeat_interval: float = 5.0,
        previews: dict[str, LoadedModel] | None = None,
    ) -> None:
        queues = [Queue(keys.queue_name(m), connection=connection, serializer=JSONSerializer) for m in models]
        super().__init__(queues, connection=connection, serializer=JSONSerializer, name=name)
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.models = models
        self.previews = previews or {}  # served model -> its tiny preview decoder
        self.store = store
        self.max_batch = max_batch
        self.max_wait = max(0.0, max_wait_ms) / 1000
        self.limits = limits or Limits()
        self.job_monitoring_interval = int(max(1, heartbeat_interval))
        self._pool = ThreadPoolExecutor(max_workers=encode_threads, thread_name_prefix="latentq-encode")
        # Bounds decoded-but-not-yet-stored images held in memory.
        self._pending = threading.BoundedSemaphore(max(2 * max_batch, 2 * encode_threads))
        self._active: dict[str, tuple[RQJob, Any]] = {}
        self._active_lock = threading.Lock()
        self._stop_heartbeats = threading.Event()
        self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, name="latentq-heartbeat", daemon=True)
        self._heartbeat_interval = heartbeat_interval
        self.stats_key = keys.worker_stats_key(self.name)
        self.faults = Faults.from_env()

    # --- RQ hooks -------------------------------------------------------------
    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        self.connection.hset(self.stats_key, mapping={"models": ",".join(self.models), "max_batch": self.max_batch})
        self._heartbeat_thread.start()

    def execute_job(self, job: RQJob, queue: Queue) -> None:
        jobs = self._collect(job, queue)
        try:
            self._run_batch(jobs, queue)
        finally:
            self.set_state("idle")

    def teardown(self) -> None:
        # Finish encoding and storing everything decoded before leaving (warm shutdown).
        self._pool.shutdown(wait=True)
        self._stop_heartbeats.set()
        super().teardown()
        self.connection.expire(self.stats_key, 3600)

    # --- batching -------------------------------------------------------------
    def _collect(self, first: RQJob, queue: Queue) -> list[RQJob]:
        jobs = [first]
        deadline = time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch:
            got = Queue.dequeue_any(
                [queue], None, connection=self.connection, job_class=self.job_class, serializer=self.serializer
            )
            if got is not None:
                jobs.append(got[0])
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(0.001, remaining))
        return jobs

    def _run_batch(self, jobs: list[RQJob], queue: Queue) -> None:
        model_name = keys.model_from_queue(queue.name) or ""
        model = self.models[model_name]
        executions = {}
        for job in jobs:
            execution = self.prepare_execution(job)
            self.prepare_job_execution(job, remove_from_intermediate_queue=True)
            job.started_at = now()
            executions[job.id] = execution
            with self._active_lock:
                self._active[job.id] = (job, execution)

        latent_keys = [job.kwargs.get("latent_key", "") for job in jobs]
        blobs = self.connection.mget(latent_keys)
        ready: list[tuple[RQJob, DecodeRequest, Any]] = []
        for job, blob in zip(jobs, blobs):
            try:
                request = DecodeRequest.from_dict(job.kwargs.get("request", {}))
                if request.model != model_name:
                    raise InvalidRequest(f"job for model {request.model!r} found on queue {queue.name!r}")
                ready.append((job, request, load_latent(blob, model.spec, request, self.limits)))
            except Exception as exc:  # a bad job fails alone
                self._fail(job, queue, executions[job.id], _reason(exc))

        for group in group_for_decode(ready, self.max_batch):
            previews = self._previews(model_name, group)
            for (job, request, _), decoded in zip(group, self._decode(model, group, queue, executions)):
                if decoded is None:
                    continue
                self._pending.acquire()
                self._pool.submit(self._finish, job, queue, executions[job.id], request, decoded, previews.get(job.id))

    def _previews(self, model_name: str, group: list) -> dict[str, Future]:
        """Decode the group with the tiny autoencoder first and publish each preview off the decode path."""
        preview = self.previews.get(model_name)
        if preview is None or not group[0][1].preview:
            return {}
        try:
            decoded = decode_preview(preview, self.models[model_name], [r for _, r, _ in group], [t for _, _, t in group])
        except Exception:  # a failed preview never fails the job
            log.warning("preview decode failed for %d jobs", len(group), exc_info=True)
            return {}
        return {job.id: self._pool.submit(self._publish_preview, job, request, image)
                for (job, request, _), image in zip(group, decoded)}  # fmt: skip

    def _publish_preview(self, job: RQJob, request: DecodeRequest, decoded: DecodedImage) -> None:
        try:
            (record,) = store_output(self.store, job.id, request, decoded, preview=True)
            job.meta["preview"] = record
            job.save_meta()
        except Exception:
            log.warning("publishing the preview of job %s failed", job.id, exc_info=True)

    def _decode(self, model: LoadedModel, group: list, queue: Queue, executions: dict) -> list[DecodedImage | None]:
        requests = [request for _, request, _ in group]
        tensors = [tensor for _, _, tensor in group]
        try:
            decoded = decode_group(model, requests, tensors, faults=self.faults)
            self._count(decode_calls=1, decoded_jobs=len(group))
            return list(decoded)
        except Exception as exc:
            if len(group) == 1:
                job = group[0][0]
                log.exception("decode failed for job %s", job.id)
                self._fail(job, queue, executions[job.id], _reason(exc))
                return [None]
            # Decode each alone so that one bad latent does not fail its neighbours.
            log.warning("batched decode of %d jobs failed (%s); decoding them one by one", len(group), exc)
            return [self._decode(model, [item], queue, executions)[0] for item in group]

    # --- finishing (thread pool) -------------------------------------------------
    def _finish(self, job: RQJob, queue: Queue, execution: Any, request: DecodeRequest, decoded: DecodedImage,
                preview: Future | None = None) -> None:  # fmt: skip
        try:
            records = store_output(self.store, job.id, request, decoded)
            if preview is not None:
                preview.result()  # the preview is published before the full result
            result = {"results": records, "batch_size": decoded.batch_size,
                      "decode_ms": round(decoded.decode_ms, 3), "tiled": decoded.tiled}  # fmt: skip
            self._succeed(job, queue, execution, result)
        except Exception as exc:
            log.exception("storing the result of job %s failed", job.id)
            self._fail(job, queue, execution, _reason(exc))
        finally:
            self._pending.release()

    def _succeed(self, job: RQJob, queue: Queue, execution: Any, result: dict[str, Any]) -> None:
        # The object is stored before RQ hears that the job finished.
        self._finalize_success(job, queue, execution, result)
        self._done(job)
        self._count(finished=1)

    def _fail(self, job: RQJob, queue: Queue, execution: Any, reason: str) -> None:
        log.warning("job %s failed: %s", job.id, reason)
        self.handle_execution_ended(job, queue, job.failure_callback_timeout)
        job._status = RQStatus.FAILED
        self.handle_job_failure(job=job, queue=queue, exc_string=reason, execution=execution)
        self._done(job)
        self._count(failed=1)

    def _done(self, job: RQJob) -> None:
        self.connection.delete(job.kwargs.get("latent_key", keys.latent_key(job.id)))
        with self._active_lock:
            self._active.pop(job.id, None)

    def _count(self, **counters: int) -> None:
        with self.connection.pipeline(transaction=False) as pipe:
            for name, value in counters.items():
                pipe.hincrby(self.stats_key, name, value)
            pipe.execute()

    # --- heartbeats ---------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        while not self._stop_heartbeats.wait(self._heartbeat_interval):
            with self._active_lock:
                active = list(self._active.values())
            for job, execution in active:
                try:
                    self.maintain_heartbeats(job, execution)
                except Exception:  # a missed heartbeat is retried next tick
                    log.debug("heartbeat for job %s failed", job.id, exc_info=True)


def _reason(exc: BaseException) -> str:
    """A readable one-line failure reason for the job's status."""
    if isinstance(exc, LatentqError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
