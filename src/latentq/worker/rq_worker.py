"""The decode worker: RQ's in-process worker, plus dynamic batching per model.

RQ's loop blocks for the first job (with its heartbeats, maintenance,
suspension and signal handling); ``execute_job`` then starts it and whatever
else waits for that model, up to ``max_batch`` (``intake``). Jobs are decoded
in a shared ``vae.decode`` with same-shape neighbours; each is then encoded
and stored (by a thread pool on a GPU, while the next batch decodes; in line
on a CPU), and the committer marks stored jobs finished, many per Redis
transaction (``completion``). A job that fails is recorded on its own.

Failure handling: a bad job fails alone and at once; an out-of-memory batch is
split in halves, a single job then falls back to tiled decode; store writes
and Redis updates are retried with backoff.

Each job is done once: the worker holds a lease on every job it popped
(renewed by its heartbeat thread) and starts, finishes or fails a job only
behind that lease (``lifecycle``). A worker that dies mid-batch, or freezes
past its leases, loses them; recovery (one worker per queue at a time, every
few seconds) re-queues its jobs for another worker, and whatever the lost
worker later tries to write for them is refused.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, Callable

from redis import Redis
from rq import Queue
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from ..state import keys, rqstate
from ..errors import InvalidRequest
from ..state.lifecycle import Ending, end_jobs
from ..models.loader import LoadedModel
from ..state.payload import JobPayload
from ..state.status import job_info
from ..state.records import write_record
from ..core.request import DecodeRequest, JobInfo, Limits
from ..store import ObjectStore
from . import upkeep
from .commands import CommandChannel
from .completion import Committer, Completed
from .decode_metrics import DecodeMetrics
from .defaults import BATCH_DEFAULTS, gpu_encode_threads
from .faults import Faults
from .intake import Batch, Intake
from .job_log import log_fields
from .model_cache import ModelCache
from .pipeline import (
    DecodedImage,
    decode_group,
    decode_preview,
    encode_group,
    group_for_decode,
    load_latent,
    store_latent,
    store_output,
    streamable,
)
from .reliable_queue import ReliableQueue
from .video_stream import GroupStream, StreamedVideo

__all__ = ["DecodeWorker"]

log = logging.getLogger("latentq.worker")

SUSPENSION_CHECK_S = 1.0  # how often the work loop reads RQ's suspension flag


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class DecodeWorker(SimpleWorker):
    """Serves a high and a normal queue per loaded model; never forks, keeps models warm."""

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
        queues = [ReliableQueue(keys.high_priority_queue_name(m), connection=connection, serializer=JSONSerializer)
                  for m in models]  # fmt: skip
        queues += [ReliableQueue(keys.queue_name(m), connection=connection, serializer=JSONSerializer) for m in models]
        # A short worker TTL makes a dead worker disappear from `rq info` and model status soon.
        # log_job_description off: RQ logs each popped job before its record is read (see intake).
        super().__init__(queues, connection=connection, serializer=JSONSerializer, name=name, worker_ttl=30,
                         queue_class=ReliableQueue, log_job_description=False)  # fmt: skip
        on_gpu = models.device.startswith("cuda") or any(str(m.device).startswith("cuda") for m in models.values())
        defaults = BATCH_DEFAULTS["cuda" if on_gpu else "cpu"]
        max_batch = defaults["max_batch"] if max_batch is None else max_batch
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_batch_pixels is not None and max_batch_pixels < 0:
            max_batch_pixels = defaults["max_batch_pixels"]
        self.models = models
        self.previews = previews or {}  # served model -> its tiny preview decoder
        self.store = store
        self.max_batch = max_batch
        self.max_batch_pixels = max_batch_pixels
        self.max_wait = max(0.0, max_wait_ms) / 1000
        self.limits = limits or Limits()
        self.store_attempts = max(1, store_attempts)
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
        if encode_threads is None:
            encode_threads = gpu_encode_threads() if on_gpu else defaults["encode_threads"]
        self.encode_threads = encode_threads
        # Encode threads use this worker's GPU: CUDA's current device is per thread, and a thread left on
        # device 0 (nvJPEG, events) would open a context there in every `--device cuda:N` worker.
        self._pool = (ThreadPoolExecutor(max_workers=encode_threads, thread_name_prefix="latentq-encode",
                                         initializer=use_device, initargs=(models.device,))
                      if encode_threads > 0 else InlineExecutor())  # fmt: skip
        # Bounds decoded-but-not-yet-stored outputs held in memory.
        self._pending = threading.BoundedSemaphore(max(2 * max_batch, 2 * encode_threads))
        self._active: dict[str, tuple[RQJob, Any]] = {}
        self._lost: set[str] = set()  # jobs whose lease lapsed: their outputs are not stored
        self._active_lock = threading.Lock()
        self._stop_heartbeats = threading.Event()
        self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, name="latentq-heartbeat", daemon=True)
        self.stats_key = keys.worker_stats_key(self.name)
        self.faults = Faults.from_env()
        self._committer = Committer(self, after=self._after_commit, lost=self._lost_commit,
                                    retry_for_s=self.execution_ttl, threaded=encode_threads > 0)  # fmt: skip
        self._intake = Intake(self)
        self.decode_metrics = DecodeMetrics(self.models, self.stats_key)

    # --- RQ hooks -------------------------------------------------------------
    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        self.connection.hset(self.stats_key, mapping={"models": ",".join(self.models), "max_batch": self.max_batch,
                                                      **upkeep.device_stats(self.models)})  # fmt: skip
        self._heartbeat_thread.start()

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

    def write_decode_metrics(self, pipe: Any) -> None:
        """Add the decode counters gathered since the last write to ``pipe`` (the committer's)."""
        self.decode_metrics.write(pipe)

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
            self._run_batch(batch)  # RQ marks the worker idle before its next pop
        finally:
            self._committer.flush()

    def teardown(self) -> None:
        # Warm shutdown: encode and store everything decoded before leaving.
        self._pool.shutdown(wait=True)
        self._committer.close()
        self._stop_heartbeats.set()
        try:
            super().teardown()
            self.connection.expire(self.stats_key, 3600)
        except Exception as exc:  # Redis is gone: its worker key expires by itself (worker_ttl)
            log.warning("could not unregister worker %s: %s", self.name, exc)

    # --- batching -------------------------------------------------------------
    def take(self, job: RQJob, queue: Queue) -> Batch:
        """Start the popped job and what waits behind it; their leases are renewed from now on."""
        batch = self._intake.take(job, queue)
        with self._active_lock:
            for started in batch.jobs:
                self._active[started.id] = (started, batch.executions[started.id])
        return batch

    def model_queues(self, model: str) -> list[Queue]:
        """The model's queues in the order they are served: high priority first."""
        return [q for q in self.queues if keys.model_from_queue(q.name) == model]

    def _run_batch(self, batch: Batch) -> None:
        queues, executions = batch.queues, batch.executions
        by_model: dict[str, list[tuple[RQJob, DecodeRequest, Any]]] = {}
        for job, blob in zip(batch.jobs, batch.blobs):
            context = (job, queues[job.id], executions[job.id])
            try:
                model_name = keys.model_from_queue(job.origin) or ""
                payload = JobPayload.from_kwargs(job.id, job.kwargs)
                request = payload.request
                job.output_token = payload.output_token  # names its outputs (the same on a re-run)
                if request.model != model_name:
                    raise InvalidRequest(f"job for model {request.model!r} found on queue {job.origin!r}")
                if request.deadline is not None and time.time() > request.deadline:
                    self._expire(*context, request)
                    continue
                tensor = load_latent(blob, self.models.spec(model_name), request, self.limits)
                by_model.setdefault(model_name, []).append((job, request, tensor))
            except Exception as exc:  # a bad job fails alone
                self._fail(*context, _reason(exc), permanent=True)

        for model_name, ready in by_model.items():
            model = None  # not the previous model's: under a budget the load below may evict it, and must free it
            try:  # under --model-memory-budget an evicted model is loaded again here, which can fail
                model = self.models[model_name]
            except Exception as exc:
                _free_memory()
                for job, _, _ in ready:
                    self._fail(job, queues[job.id], executions[job.id], f"cannot load model {model_name}: "
                               f"{_reason(exc)}", permanent=False)  # fmt: skip
                continue
            for group in group_for_decode(ready, self.max_batch, model.spec, self.max_batch_pixels):
                if group[0][1].task == "encode":
                    self._encode(model, group, queues, executions)
                    continue
                previews = self._previews(model_name, group)
                stream = self._open_streams(model, group, queues, executions, previews)
                try:
                    results = self._decode(model, group, queues, executions, stream=stream)
                finally:
                    if stream is not None:
                        stream.end()  # after decode_metrics counted the decode: its encoders may finish now
                for (job, request, _), decoded in zip(group, results):
                    if decoded is None or isinstance(decoded, StreamedVideo):  # failed, or its encoder has it
                        continue
                    self._await_encoder(model_name)
                    self._pool.submit(self._finish, job, queues[job.id], executions[job.id], request, decoded,
                                      previews.get(job.id))  # fmt: skip

    def _open_streams(self, model: LoadedModel, group: list, queues: dict, executions: dict,
                      previews: dict[str, Future]) -> GroupStream | None:  # fmt: skip
        """MP4 jobs of a model that decodes chunk by chunk: their encoders start now, on the pool, and take the
        frames as they are decoded (video_stream). Only with a thread per job: an encoder waits for frames."""
        if len(group) > self.encode_threads or not streamable(model, [r for _, r, _ in group], [t for _, _, t in group]):
            return None
        stream = GroupStream(model.path, len(group))
        for (job, request, _), video in zip(group, stream.videos):
            self._await_encoder(model.spec.name)
            self._pool.submit(video.consume, request, self._pending.release, self._finish, job, queues[job.id],
                              executions[job.id], request, video, previews.get(job.id))  # fmt: skip
        return stream

    def _decode(self, model: LoadedModel, group: list, queues: dict, executions: dict,
                force_tile: bool = False, stream: GroupStream | None = None) -> list[DecodedImage | None]:  # fmt: skip
        requests = [request for _, request, _ in group]
        tensors = [tensor for _, _, tensor in group]
        try:  # with a stream (the first try only), the fallbacks below decode whole
            decoded = list(decode_group(model, requests, tensors, faults=self.faults, force_tile=force_tile,
                                        stream=stream))  # fmt: skip
            # On CUDA decode_group returns once the work is queued: the batch's time is observed once stored.
            self.decode_metrics.decoded(model.spec.name, [job.id for job, _, _ in group])
            return decoded
        except Exception as exc:
            _free_memory()
            if is_out_of_memory(exc) and len(group) > 1:
                half = len(group) // 2
                log.warning("out of memory decoding %d jobs; splitting into %d + %d", len(group), half, len(group) - half)
                return (self._decode(model, group[:half], queues, executions, force_tile)
                        + self._decode(model, group[half:], queues, executions, force_tile))  # fmt: skip
            if is_out_of_memory(exc) and not force_tile and hasattr(model.module, "use_tiling"):
                log.warning("out of memory decoding job %s alone; retrying with tiled decode", group[0][0].id)
                return self._decode(model, group, queues, executions, force_tile=True)
            if len(group) > 1:
                # Decode each alone so that one bad latent does not fail its neighbours.
                log.warning("batched decode of %d jobs failed (%s); decoding them one by one", len(group), exc)
                return [self._decode(model, [item], queues, executions, force_tile)[0] for item in group]
            job = group[0][0]
            reason = _reason(exc)
            if is_out_of_memory(exc):
                reason = f"OutOfMemory: the decode does not fit on {model.device} even tiled ({exc})"
            log.error("decode failed for job %s: %s", job.id, reason)
            self._fail(job, queues[job.id], executions[job.id], reason, permanent=True)
            return [None]

    def _encode(self, model: LoadedModel, group: list, queues: dict, executions: dict) -> None:
        try:
            latents = encode_group(model, [tensor for _, _, tensor in group], [request for _, request, _ in group])
        except Exception as exc:
            for job, _, _ in group:
                self._fail(job, queues[job.id], executions[job.id], _reason(exc), permanent=True)
            return
        for (job, _, _), latent in zip(group, latents):
            self._await_encoder(model.spec.name)
            self._pool.submit(self._finish_encode, job, queues[job.id], executions[job.id], latent)

    def _await_encoder(self, model: str) -> None:
        """Take a slot of the bounded pending outputs; time spent waiting for one (encoders behind the
        decodes) is counted, per model, in /metrics and the worker's stats."""
        if self._pending.acquire(blocking=False):
            return
        started = time.perf_counter()
        self._pending.acquire()
        self.decode_metrics.encode_wait(model, time.perf_counter() - started)

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
            (record,) = self._retrying(lambda: store_output(self.store, job.id, request, decoded, preview=True,
                                                            token=job.output_token), job)  # fmt: skip
            job.meta["preview"] = record
            job.save_meta()
        except Exception:
            log.warning("publishing the preview of job %s failed", job.id, exc_info=True)

    # --- finishing (thread pool) -------------------------------------------------
    def _retrying(self, action: Callable[[], Any], job: RQJob) -> Any:
        """Transient failures (store, network, Redis) retried with exponential backoff."""
        for attempt in range(1, self.store_attempts + 1):
            try:
                self.faults.before_store()
                return action()
            except Exception as exc:
                if attempt == self.store_attempts:
                    raise
                delay = 0.1 * 2 ** (attempt - 1)
                log.warning("job %s: %s (attempt %d); retrying in %.1f s", job.id, _reason(exc), attempt, delay)
                time.sleep(delay)

    def _finish(self, job: RQJob, queue: Queue, execution: Any, request: DecodeRequest, decoded: DecodedImage,
                preview: Future | None = None) -> None:  # fmt: skip
        try:
            if job.id in self._lost:  # its lease lapsed: another worker runs it
                self._lost.discard(job.id)
                return
            timings: dict[str, float] = {}
            records = self._retrying(lambda: store_output(self.store, job.id, request, decoded, timings=timings,
                                                          token=job.output_token), job)  # fmt: skip
            if preview is not None:
                preview.result()  # the preview is published before the full result
            job.ended_at = rqstate.now()
            result = {"results": records, "batch_size": decoded.batch_size, "decode_ms": round(decoded.decode_ms, 3),
                      "tiled": decoded.tiled}  # fmt: skip
            self.decode_metrics.stored(job.id, decoded.decode_ms)
            info = self._store_record(job, result, timings)
            self._committer.submit(Completed(job, queue, execution, request.model, result, info, timings,
                                             job.lease_token))  # fmt: skip
        except Exception as exc:
            log.exception("storing the result of job %s failed", job.id)
            self._fail(job, queue, execution, _reason(exc), permanent=False)
        finally:
            self.decode_metrics.stored(job.id, None)  # forgets the job's entry (observed by a neighbour, or never)
            self._pending.release()

    def _finish_encode(self, job: RQJob, queue: Queue, execution: Any, latent: Any) -> None:
        try:
            if job.id in self._lost:  # its lease lapsed: another worker runs it
                self._lost.discard(job.id)
                return
            request = JobPayload.from_kwargs(job.id, job.kwargs).request
            started = time.perf_counter()
            records = self._retrying(lambda: store_latent(self.store, job.id, latent, token=job.output_token), job)
            job.ended_at = rqstate.now()
            timings = {"encode": 0.0, "store": time.perf_counter() - started}
            result = {"results": records, "batch_size": 1}
            info = self._store_record(job, result, timings)
            self._committer.submit(Completed(job, queue, execution, request.model, result, info, timings,
                                             job.lease_token))  # fmt: skip
        except Exception as exc:
            self._fail(job, queue, execution, _reason(exc), permanent=False)
        finally:
            self._pending.release()

    def _store_record(self, job: RQJob, result: dict[str, Any], timings: dict[str, float]) -> JobInfo:
        """Write the finished job's record to the store, before Redis says finished: one of them always answers."""
        started = time.perf_counter()
        result["encode_ms"] = round(timings.get("encode", 0.0) * 1000, 3)
        result["store_ms"] = round(timings.get("store", 0.0) * 1000, 3)  # the outputs' (the record's is added below)
        info = job_info(job, lambda key: None, result=result)  # URLs are made when it is read
        self._retrying(lambda: write_record(self.store, info), job)
        timings["store"] = timings.get("store", 0.0) + time.perf_counter() - started
        result["store_ms"] = round(timings["store"] * 1000, 3)
        return info

    def _after_commit(self, item: Completed) -> None:
        """A job is marked finished in Redis (the committer's thread, or the decoding one on a CPU)."""
        log.info("job %s finished (batch of %d)", item.job.id, item.result.get("batch_size", 1),
                 extra=log_fields(item.job))  # fmt: skip
        with self._active_lock:
            self._active.pop(item.job.id, None)

    def commit_failed(self, items: list[Completed]) -> None:
        """Redis stayed unreachable past the jobs' leases: let them go; recovery re-queues them."""
        for item in items:
            self._forget(item.job.id)

    def _lost_commit(self, item: Completed) -> None:
        log.warning("job %s was taken from this worker (its lease lapsed); its result is discarded", item.job.id,
                    extra=log_fields(item.job))  # fmt: skip
        self._forget(item.job.id)

    def _forget(self, job_id: str) -> None:
        with self._active_lock:
            self._active.pop(job_id, None)
        self._lost.discard(job_id)

    def _expire(self, job: RQJob, queue: Queue, execution: Any, request: DecodeRequest) -> None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(request.deadline or 0))
        self._fail(job, queue, execution, f"DeadlineExpired: not started by its deadline {when}", permanent=True,
                   status="expired")  # fmt: skip

    def _fail(self, job: RQJob, queue: Queue, execution: Any, reason: str, *, permanent: bool,
              status: str = "failed") -> None:  # fmt: skip
        """End a job that failed: re-queued while it has retries (and the failure may pass), else failed."""
        log.warning("job %s failed: %s", job.id, reason, extra=log_fields(job))
        retry = not permanent and bool(job.retries_left)
        ending = Ending(job, "retry" if retry else status, queue, execution, getattr(job, "lease_token", ""),
                        reason=reason)  # fmt: skip
        deadline = time.monotonic() + self.execution_ttl
        delay = 0.05
        while True:  # its webhook, if any, is queued by the same transaction (lifecycle, outbox)
            try:
                end_jobs(self.connection, [ending], worker=self)
                break
            except Exception as exc:  # Redis unreachable: retried while the lease may hold
                if time.monotonic() + delay > deadline:
                    log.error("could not record the failure of job %s (%s); recovery will re-run it", job.id, exc)
                    break
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        self._forget(job.id)

    # --- upkeep (the heartbeat thread) -------------------------------------------
    def _heartbeat_loop(self) -> None:
        upkeep.run(self, self._stop_heartbeats)

    def _renew(self) -> None:
        upkeep.renew(self)

    def _recover_abandoned(self) -> None:
        upkeep.recover_abandoned(self)


class InlineExecutor(Executor):
    """``submit`` runs the call at once in the calling thread (``--encode-threads 0``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def use_device(device: str) -> None:
    """Make ``device`` this thread's current CUDA device (a CPU device: nothing to do)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(torch.device(device))


def _free_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _reason(exc: BaseException) -> str:
    """A readable one-line failure reason for the job's status."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
