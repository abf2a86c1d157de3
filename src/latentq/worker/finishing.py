"""The worker's output side: decoded jobs stored and handed to the committer, failed jobs ended alone.

A decoded output waits for a slot of the bounded pending outputs (decoded but not yet stored: they hold
memory), then the encode pool (threads on a GPU, in line on a CPU) encodes and stores it, writes the
job's record to the store and hands the job to the committer (``completion``), which marks it finished
in Redis with others. A job whose lease lapsed meanwhile (``ActiveJobs``: lost) is dropped before its
outputs are stored. Store writes and Redis updates are retried with backoff; a job that still fails is
re-queued while it has retries (and the failure may pass), else failed.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

from rq.job import Job as RQJob

from ..core.request import FailureKind, JobInfo, JobResult
from ..state import rqstate
from ..state.lifecycle import Ending, EndingWorker, end_jobs
from ..state.records import write_record
from ..state.status import job_info
from ..store import ObjectStore
from .active import ActiveJobs
from .completion import Committer, Completed
from .decode_metrics import DecodeMetrics
from .faults import Faults
from .job_log import log_fields
from .pipeline import DecodedImage, store_latent, store_output
from .video_stream import StreamedVideo
from .work_item import WorkItem

__all__ = ["EndingWorker", "Finisher", "InlineExecutor", "reason", "use_device"]

log = logging.getLogger("latentq.worker")


class Finisher:
    """Stores outputs on the encode pool, ends jobs (the committer's host), fails jobs.

    ``pending``: the bound of decoded-but-not-yet-stored outputs; ``retry_for_s``: how long a job's end is
    retried while Redis is unreachable (as long as its lease may hold).
    """

    def __init__(self, worker: EndingWorker, store: ObjectStore, active: ActiveJobs, decode_metrics: DecodeMetrics,
                 faults: Faults, *, store_attempts: int, retry_for_s: float, encode_threads: int, device: str,
                 pending: int) -> None:  # fmt: skip
        self.worker = worker
        self.connection = worker.connection
        self.store = store
        self.active = active
        self.decode_metrics = decode_metrics
        self.faults = faults
        self.store_attempts = max(1, store_attempts)
        self.retry_for_s = retry_for_s
        # Encode threads use this worker's GPU: CUDA's current device is per thread, and a thread left on
        # device 0 (nvJPEG, events) would open a context there in every `--device cuda:N` worker.
        self.pool = (ThreadPoolExecutor(max_workers=encode_threads, thread_name_prefix="latentq-encode",
                                        initializer=use_device, initargs=(device,))
                     if encode_threads > 0 else InlineExecutor())  # fmt: skip
        self.pending = threading.BoundedSemaphore(pending)  # decoded-but-not-yet-stored outputs held in memory
        self.committer = Committer(self, retry_for_s=retry_for_s, threaded=encode_threads > 0)

    def flush(self) -> None:
        """In line (a CPU worker): commit the jobs finished since the last flush."""
        self.committer.flush()

    def close(self) -> None:
        """Encode and store everything decoded, commit it, then stop."""
        self.pool.shutdown(wait=True)
        self.committer.close()

    # --- handing outputs to the encode pool ----------------------------------------
    # ``model``: the name its wait for a slot is counted under.
    def submit_decoded(self, model: str, item: WorkItem, decoded: DecodedImage, preview: Future | None) -> None:
        self._await_slot(model)
        self.pool.submit(self._finish, item, decoded, preview)

    def submit_stream(self, model: str, item: WorkItem, video: StreamedVideo, preview: Future | None) -> None:
        """An MP4 encoded as its frames are decoded (``video_stream``): its encoder starts now."""
        self._await_slot(model)
        self.pool.submit(video.consume, item.request, self.pending.release, self._finish, item, video, preview)

    def submit_encoded(self, model: str, item: WorkItem, latent: Any) -> None:
        """An encode job's latent."""
        self._await_slot(model)
        self.pool.submit(self._finish_encode, item, latent)

    def submit_preview(self, item: WorkItem, image: DecodedImage) -> Future:
        """Publish a job's preview off the decode path; the job's result waits for it."""
        return self.pool.submit(self._publish_preview, item, image)

    def _await_slot(self, model: str) -> None:
        """Take a slot of the bounded pending outputs; time spent waiting for one (encoders behind the
        decodes) is counted, per model, in /metrics and the worker's stats."""
        if self.pending.acquire(blocking=False):
            return
        started = time.perf_counter()
        self.pending.acquire()
        self.decode_metrics.encode_wait(model, time.perf_counter() - started)

    # --- the encode pool ----------------------------------------------------------
    def _publish_preview(self, item: WorkItem, decoded: DecodedImage) -> None:
        job = item.job
        try:
            (record,) = self._retrying(lambda: store_output(self.store, job.id, item.request, decoded, preview=True,
                                                            token=item.output_token), job)  # fmt: skip
            job.meta["preview"] = record
            job.save_meta()
        except Exception:
            log.warning("publishing the preview of job %s failed", job.id, exc_info=True)

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
                log.warning("job %s: %s (attempt %d); retrying in %.1f s", job.id, reason(exc), attempt, delay)
                time.sleep(delay)

    def _finish(self, item: WorkItem, decoded: DecodedImage | StreamedVideo, preview: Future | None = None) -> None:
        job = item.job
        try:
            if self._dropped(item):
                return
            timings: dict[str, float] = {}
            records = self._retrying(lambda: store_output(self.store, job.id, item.request, decoded, timings=timings,
                                                          token=item.output_token), job)  # fmt: skip
            if preview is not None:
                preview.result()  # the preview is published before the full result
            job.ended_at = rqstate.now()
            result = JobResult(records, batch_size=decoded.batch_size, decode_ms=round(decoded.decode_ms, 3),
                               tiled=decoded.tiled)  # fmt: skip
            self.decode_metrics.stored(job.id, decoded.decode_ms)
            result, info = self._store_record(job, result, timings)
            self.committer.submit(Completed(item, result, info, timings))
        except Exception as exc:
            log.exception("storing the result of job %s failed", job.id)
            self.fail(item, reason(exc), permanent=False)
        finally:
            self.decode_metrics.stored(job.id, None)  # forgets the job's entry (observed by a neighbour, or never)
            self.pending.release()

    def _finish_encode(self, item: WorkItem, latent: Any) -> None:
        job = item.job
        try:
            if self._dropped(item):
                return
            started = time.perf_counter()
            records = self._retrying(lambda: store_latent(self.store, job.id, latent, token=item.output_token), job)
            job.ended_at = rqstate.now()
            timings = {"encode": 0.0, "store": time.perf_counter() - started}
            result, info = self._store_record(job, JobResult(records, batch_size=1), timings)
            self.committer.submit(Completed(item, result, info, timings))
        except Exception as exc:
            self.fail(item, reason(exc), permanent=False)
        finally:
            self.pending.release()

    def _dropped(self, item: WorkItem) -> bool:
        """Whether the job's lease lapsed (another worker runs it): then it is forgotten, its outputs not stored."""
        if not self.active.is_lost(item.id):
            return False
        self.active.forget(item.id)
        return True

    def _store_record(self, job: RQJob, result: JobResult, timings: dict[str, float]) -> tuple[JobResult, JobInfo]:
        """Write the finished job's record to the store, before Redis says finished: one of them always answers.
        Returns the result with its encode and store times (the record's own write included) and the record."""
        started = time.perf_counter()
        result = dataclasses.replace(result, encode_ms=round(timings.get("encode", 0.0) * 1000, 3),
                                     store_ms=round(timings.get("store", 0.0) * 1000, 3))  # the outputs' store time
        info = job_info(job, lambda key: None, result=result)  # URLs are made when it is read
        self._retrying(lambda: write_record(self.store, info), job)
        timings["store"] = timings.get("store", 0.0) + time.perf_counter() - started
        return dataclasses.replace(result, store_ms=round(timings["store"] * 1000, 3)), info

    # --- the committer's host -----------------------------------------------------
    def write_decode_metrics(self, pipe: Any) -> None:
        """Add the decode counters gathered since the last write to ``pipe`` (the committer's)."""
        self.decode_metrics.write(pipe)

    def end_jobs(self, endings: list[Ending], extra: list[tuple[Any, ...]] | None = None) -> list[bool]:
        return end_jobs(self.connection, endings, worker=self.worker, extra=extra)

    def committed(self, done: Completed) -> None:
        """A job is marked finished in Redis (the committer's thread, or the decoding one on a CPU)."""
        job = done.work.job
        log.info("job %s finished (batch of %d)", job.id, done.result.batch_size or 1, extra=log_fields(job))
        self.active.finished(job.id)

    def commit_refused(self, done: Completed) -> None:
        job = done.work.job
        log.warning("job %s was taken from this worker (its lease lapsed); its result is discarded", job.id,
                    extra=log_fields(job))  # fmt: skip
        self.active.forget(job.id)

    def commit_failed(self, items: list[Completed]) -> None:
        """Redis stayed unreachable past the jobs' leases: let them go; recovery re-queues them."""
        for done in items:
            self.active.forget(done.work.id)

    # --- failures -----------------------------------------------------------------
    def expire(self, item: WorkItem) -> None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(item.request.deadline or 0))
        self.fail(item, f"DeadlineExpired: not started by its deadline {when}", permanent=True, status="expired")

    def fail(self, item: WorkItem, why: str, *, permanent: bool, status: str = "failed",
             failure: FailureKind = FailureKind.WORKER) -> None:  # fmt: skip
        """End a job that failed: re-queued while it has retries (and the failure may pass), else failed;
        ``failure`` says why, with the failure (the API's status for it)."""
        job = item.job
        log.warning("job %s failed: %s", job.id, why, extra=log_fields(job))
        retry = not permanent and bool(job.retries_left)
        ending = Ending(job, "retry" if retry else status, item.queue, item.execution, item.token, reason=why,
                        failure=failure)  # fmt: skip
        deadline = time.monotonic() + self.retry_for_s
        delay = 0.05
        while True:  # its webhook, if any, is queued by the same transaction (lifecycle, outbox)
            try:
                self.end_jobs([ending])
                break
            except Exception as exc:  # Redis unreachable: retried while the lease may hold
                if time.monotonic() + delay > deadline:
                    log.error("could not record the failure of job %s (%s); recovery will re-run it", job.id, exc)
                    break
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        self.active.forget(job.id)


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


def reason(exc: BaseException) -> str:
    """A readable one-line failure reason for the job's status."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
