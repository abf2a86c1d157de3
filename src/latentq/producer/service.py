"""The job service: submit, status, cancel and batches, straight on Redis; shared by ``Client`` and the API.

``latentq.Client`` is the Python SDK's facade over it (one tenant, the store's own URLs); the HTTP API
(``latentq.api``) calls it directly, passing each request's tenant and a ``url_for`` that signs result
URLs for the API's public address. Jobs' payloads are written and read through ``latentq.state.payload``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from redis import Redis
from rq import Queue, Retry, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from ..config import TASK_FUNCTION, Settings
from ..core.request import DecodeRequest, JobInfo, JobStatus, ResultObject
from ..core.wire import latent_to_bytes
from ..errors import InvalidLatent, InvalidRequest, JobConflict, JobNotFound
from ..models.registry import Registry, load_registry
from ..models.validate import validate_audio_latents, validate_image, validate_latent
from ..state import keys
from ..state.admission import admit, check_idempotency_key
from ..state.connection import redis_from_url, redis_unavailable
from ..state.deployment import Deployment
from ..state.fence import capture, captured
from ..state.lifecycle import Ending, end_jobs
from ..state.payload import JobPayload, request_field
from ..state.recent import index_recent_job
from ..state.records import RecordReader
from ..state.status import job_info
from ..state.tenants import DEFAULT_TENANT, Tenant, TenantDirectory, digest
from ..store import ObjectStore
from .job import Job
from .waiter import RECHECK_S, DoneListener, has_ended

__all__ = ["BATCH_READ_THREADS", "JobService", "UrlFor"]

BATCH_READ_THREADS = 8  # a batch's status reads its jobs concurrently

UrlFor = Callable[[str], str | None]  # a result key -> its URL (None: the service's own, result_url)


def _samples(values: torch.Tensor | Sequence[torch.Tensor], field: str) -> list[torch.Tensor]:
    """A batch tensor's samples (its first dimension), or a list's items."""
    if isinstance(values, torch.Tensor):
        if values.ndim < 2:
            raise InvalidLatent(f"submit_many needs a batch of {field}, got shape {tuple(values.shape)}", field=field)
        return list(values.unbind(0))
    return list(values)


class JobService:
    """Submit, read, wait for and cancel jobs for any tenant; one per process (the API) or per ``Client``."""

    def __init__(self, settings: Settings, *, registry: Registry | None = None, store: ObjectStore | None = None,
                 connection: Redis | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.registry = registry or load_registry(settings.models_file)
        self._store = store
        self._records: RecordReader | None = None
        self.connection = connection or redis_from_url(settings.redis_url)
        self.deployment = Deployment(self.connection, settings)
        self.tenants = TenantDirectory(self.connection)
        self._queues: dict[str, Queue] = {}
        # One listener (one pub/sub connection, one thread) for every thread that waits on a job.
        self._listener: DoneListener | None = None
        self._lock = threading.Lock()

    # --- the deployment: store, result URLs, queues ----------------------------------------
    @property
    @redis_unavailable()
    def store(self) -> ObjectStore:
        """The store given, else this process's store setting, else the deployment's (published in Redis
        by its workers, followed when it moves)."""
        return self._store if self._store is not None else self.deployment.current_store()

    @property
    def records(self) -> RecordReader:
        """Finished jobs' records in the store (what answers once Redis has dropped a job)."""
        store = self.store
        if self._records is None or self._records.store is not store:
            self._records = RecordReader(store, cleanups=self.deployment.cleanups,
                                         max_age=self.settings.result_ttl)  # fmt: skip
        return self._records

    @redis_unavailable()
    def result_url(self, key: str) -> str | None:
        """The URL of a result: signed, through the deployment's API, for the local store (None when the
        deployment has no API); the store's own (presigned) URL for S3."""
        return self.deployment.result_url(self.store, key)

    @redis_unavailable()
    def read_result(self, result: ResultObject) -> bytes:
        return self.deployment.read_result(self.store, result)

    def queue(self, model: str, priority: str = "normal") -> Queue:
        name = keys.high_priority_queue_name(model) if priority == "high" else keys.queue_name(model)
        if name not in self._queues:
            self._queues[name] = Queue(name, connection=self.connection, serializer=JSONSerializer)
        return self._queues[name]

    @redis_unavailable()
    def queued_count(self, model: str) -> int:
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.llen(self.queue(model).key)
            pipe.llen(self.queue(model, "high").key)
            return sum(pipe.execute())

    @redis_unavailable()
    def workers_serving(self, model: str) -> int:
        return Worker.count(connection=self.connection, queue=self.queue(model))

    # --- submit ---------------------------------------------------------------------
    @redis_unavailable()
    def submit(self, latent: torch.Tensor, request: DecodeRequest, *, tenant: Tenant | str | None = None,
               idempotency_key: str | None = None, audio_latents: torch.Tensor | None = None) -> Job:  # fmt: skip
        """One job (a decode, or an encode: ``request.task``) for ``tenant`` (a name is looked up; None: the
        default tenant)."""
        audios = None if audio_latents is None else [audio_latents]
        return self._enqueue([latent], request, None, tenant, idempotency_key, audios)[0]

    @redis_unavailable()
    def submit_many(self, latents: torch.Tensor | Sequence[torch.Tensor], request: DecodeRequest, *,
                    tenant: Tenant | str | None = None, idempotency_key: str | None = None,
                    audio_latents: torch.Tensor | Sequence[torch.Tensor] | None = None) -> list[Job]:  # fmt: skip
        """One job per sample of a batch tensor or a list, grouped under one new batch id."""
        samples = _samples(latents, "latents")
        audios = None
        if audio_latents is not None:
            audios = _samples(audio_latents, "audio_latents")
            if len(audios) != len(samples):
                raise InvalidLatent(f"audio_latents hold {len(audios)} samples for {len(samples)} latents: one each",
                                    field="audio_latents")  # fmt: skip
        if not samples:
            raise InvalidRequest("submit_many got no latents", field="latents")
        if len(samples) > self.settings.limits.max_batch_submit:
            raise InvalidRequest(
                f"submit_many got {len(samples)} latents, over the limit of {self.settings.limits.max_batch_submit}",
                field="latents",
            )
        return self._enqueue(samples, request, uuid.uuid4().hex, tenant, idempotency_key, audios)

    def _validate(self, tensor: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        spec = self.registry.get(request.model)
        if request.task == "encode":
            return validate_image(tensor, spec, self.settings.limits, vae_input=request.vae_input)
        return validate_latent(tensor, spec, request, self.settings.limits)

    def _enqueue(self, latents: Iterable[torch.Tensor], request: DecodeRequest, batch_id: str | None,
                 tenant: Tenant | str | None, idempotency_key: str | None,
                 audio_latents: list[torch.Tensor] | None = None) -> list[Job]:  # fmt: skip
        """``audio_latents``: each latent's (a video's sound), or None."""
        if request.callback_url is not None:  # this deployment's policy (its Settings), as at delivery
            self.settings.webhook_policy.check(request.callback_url, resolve=True)
        spec = self.registry.get(request.model)
        payloads: list[tuple[str, torch.Tensor, torch.Tensor | None]] = []
        for index, latent in enumerate(latents):
            try:
                audio = None
                if audio_latents is not None:  # validated before its latent is
                    audio = validate_audio_latents(audio_latents[index], spec, request, self.settings.limits,
                                                   self.registry)  # fmt: skip
                tensor = self._validate(latent, request)
            except InvalidRequest as exc:
                if batch_id is not None:
                    raise type(exc)(f"latent {index}: {exc}", field=exc.field) from None
                raise
            payloads.append((uuid.uuid4().hex, tensor, audio))
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        if not isinstance(tenant, Tenant):  # looked up once the input is known to be good
            tenant = self.tenants.tenant(tenant or DEFAULT_TENANT)
        settings = self.settings
        queue = self.queue(request.model, request.priority)
        meta: dict[str, Any] = {"tenant": tenant.name}
        if batch_id:
            meta["batch_id"] = batch_id
        job_datas = [
            Queue.prepare_data(
                TASK_FUNCTION,
                kwargs=JobPayload.new(job_id, request, list(tensor.shape)).to_kwargs(),
                job_id=job_id,
                timeout=settings.job_timeout,
                result_ttl=settings.redis_record_ttl,  # then the record in the store answers
                failure_ttl=settings.failure_ttl,
                ttl=settings.latent_ttl,
                meta=meta,
                retry=Retry(max=settings.max_retries) if settings.max_retries > 0 else None,
                description=f"{request.task} {request.model} -> {request.output_format}",
            )
            for job_id, tensor, _ in payloads
        ]
        # The latents, the jobs and the checks that admit them: one atomic script (latentq.state.admission).
        submitted_at = time.time()
        pipe = capture(self.connection)
        for job_id, tensor, audio in payloads:
            pipe.set(keys.latent_key(job_id), latent_to_bytes(tensor, audio), ex=settings.latent_ttl)
            index_recent_job(pipe, tenant.name, job_id, submitted_at)  # GET /v1/jobs lists it
        if batch_id:
            batch = keys.batch_key(batch_id)
            pipe.rpush(batch, *[job_id for job_id, _, _ in payloads])
            pipe.expire(batch, settings.result_ttl)
        queue.enqueue_many(job_datas, pipeline=pipe)
        # The ids' push onto the queue is admission's: it places them in fair-share order.
        writes = [c for c in captured(pipe) if not (c[0] in ("RPUSH", "LPUSH") and c[1] == queue.key)]
        admitted = admit(
            self.connection,
            queue_key=queue.key,
            model_queue_keys=(self.queue(request.model).key, self.queue(request.model, "high").key),
            model_cap=settings.max_queued,
            tenant=tenant,
            job_ids=[job_id for job_id, _, _ in payloads],
            batch_id=batch_id,
            model=request.model,
            writes=writes,
            job_key_prefix=RQJob.redis_job_namespace_prefix,
            order_ttl=settings.latent_ttl,
            now=submitted_at,
            idempotency_digest=digest(idempotency_key) if idempotency_key is not None else None,
        )
        return [Job(self, job_id, admitted.model, admitted.batch_id) for job_id in admitted.job_ids]

    # --- status -----------------------------------------------------------------------
    def _fetch(self, job_id: str) -> RQJob | None:
        """The job's RQ record, or None once Redis no longer holds it."""
        try:
            return RQJob.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
        except NoSuchJobError:
            return None

    def _stored_info(self, job_id: str, url_for: UrlFor | None = None) -> JobInfo:
        """A job Redis no longer holds: its record in the store, if it finished within the result TTL."""
        info = self.records.read(job_id, url_for or self.result_url)
        if info is None:
            raise JobNotFound(f"no job {job_id!r} (never submitted, or older than the result TTL)")
        return info

    @redis_unavailable()
    def job_info(self, job_id: str, url_for: UrlFor | None = None) -> JobInfo:
        """A job's status; ``url_for(key)`` makes its result URLs (default: ``result_url``)."""
        return self._info(job_id, self._fetch(job_id), url_for)

    def _info(self, job_id: str, rq_job: RQJob | None, url_for: UrlFor | None = None) -> JobInfo:
        """The status of a job whose RQ record was just fetched (None: Redis no longer holds it)."""
        if rq_job is None:
            return self._stored_info(job_id, url_for)
        model = request_field(rq_job.kwargs, "model", "")
        deadline = request_field(rq_job.kwargs, "deadline")
        # Kept as it was: a status read of a queued job past its deadline expires the job (its webhook, its
        # done message), so a deadline holds even where no worker serves the model. Moved here from Client.
        if deadline is not None and time.time() > deadline and rq_job.get_status(refresh=False).value == "queued":
            self._expire_queued(rq_job)
        queue = Queue(rq_job.origin, connection=self.connection, serializer=JSONSerializer)
        # Live workers matter only to a job that still waits; counting them costs round trips.
        waiting = rq_job.get_status(refresh=False).value in ("queued", "deferred", "scheduled")
        workers = self.workers_serving(model) if model and waiting else None
        return job_info(rq_job, url_for or self.result_url, queue=queue, workers=workers)

    def _expire_queued(self, rq_job: RQJob) -> None:
        """A queued job past its deadline ends now, whether or not a worker ever looks at it."""
        self._end_queued(rq_job, "expired")  # refused: it started or ended meanwhile

    def _end_queued(self, rq_job: RQJob, status: str) -> bool:
        """End a queued job here (canceled, or expired) through the job lifecycle; False if a worker took it.

        Its webhook, if any, goes into the outbox in the same transaction (any worker or API delivers it)."""
        (done,) = end_jobs(self.connection, [Ending(rq_job, status, url_for=self.result_url)])
        return done

    @redis_unavailable()
    def wait_for(self, job_id: str, timeout: float) -> JobInfo:
        """The job's status as soon as it ends, or at the timeout: woken by the worker's message, not polling."""
        deadline = time.monotonic() + timeout
        ended = threading.Event()
        with self.listener().watch(job_id, ended.set):
            rq_job = self._fetch(job_id)
            if rq_job is None:  # ended a while ago (or unknown: JobNotFound)
                return self._stored_info(job_id)
            job_deadline = request_field(rq_job.kwargs, "deadline")
            while True:
                # Checked after registering, so no end is missed; one field, the full status only at the end.
                remaining = deadline - time.monotonic()
                if self._has_ended(job_id, job_deadline) or remaining <= 0:
                    return self.job_info(job_id)
                # The periodic re-check also covers ends nobody published (a TTL, a manual change),
                # and a queued job's deadline passing.
                pause = min(remaining, RECHECK_S)
                if job_deadline is not None:
                    pause = max(0.0, min(pause, job_deadline - time.time() + 0.01))
                ended.wait(pause)
                ended.clear()

    def listener(self) -> DoneListener:
        """This service's one listener for ended jobs (started by the first wait)."""
        with self._lock:
            if self._listener is None:
                self._listener = DoneListener(self.connection)
            return self._listener

    def _has_ended(self, job_id: str, job_deadline: float | None) -> bool:
        return has_ended(self.connection.hget(RQJob.key_for(job_id), "status"), job_deadline)

    @redis_unavailable()
    def cancel(self, job_id: str) -> JobInfo:
        """Cancel a job that has not started; its latent is deleted. A started or ended job is a JobConflict."""
        rq_job = self._fetch(job_id)
        status = self._info(job_id, rq_job).status  # JobNotFound for an unknown job
        if rq_job is None or status is not JobStatus.QUEUED:
            verb = "will finish" if status is JobStatus.STARTED else "cannot be canceled"
            raise JobConflict(f"job {job_id} is {status.value} and {verb}")
        if not self._end_queued(rq_job, "canceled"):
            raise JobConflict(f"job {job_id} was just taken by a worker and will run; it cannot be canceled")
        return self.job_info(job_id)

    # --- batches ----------------------------------------------------------------------
    @redis_unavailable()
    def batch_job_ids(self, batch_id: str) -> list[str]:
        ids = [i.decode() for i in self.connection.lrange(keys.batch_key(batch_id), 0, -1)]
        if not ids:
            raise JobNotFound(f"no batch {batch_id!r}")
        return ids

    @redis_unavailable()
    def batch_info(self, batch_id: str, url_for: UrlFor | None = None) -> dict[str, Any]:
        """Counts per status and every job's status and results, for a submit_many batch."""

        def info_or_none(job_id: str) -> JobInfo | None:
            try:
                return self.job_info(job_id, url_for)
            except JobNotFound:
                return None  # older than the result TTL

        # Concurrent reads: one Redis round trip or one store request per job, not one after another.
        with ThreadPoolExecutor(max_workers=BATCH_READ_THREADS) as pool:
            infos = [info for info in pool.map(info_or_none, self.batch_job_ids(batch_id)) if info is not None]
        counts = Counter(info.status.value for info in infos)
        return {
            "id": batch_id,
            "total": len(infos),
            "counts": {status.value: counts.get(status.value, 0) for status in JobStatus},
            "done": all(info.status.is_final for info in infos),
            "jobs": [info.to_dict() for info in infos],
        }

    def close(self) -> None:
        """Drop the connections (webhooks of jobs ended here wait in Redis's outbox, not in this process)."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self.connection.close()
