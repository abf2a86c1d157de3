"""The Python producer: submit latents straight to Redis, get a Job handle back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from redis import Redis
from rq import Queue
from rq.job import Job as RQJob
from rq.exceptions import NoSuchJobError
from rq.serializers import JSONSerializer

from .. import keys
from ..config import TASK_FUNCTION, Settings
from ..errors import InvalidLatent, InvalidRequest, JobFailed, JobNotFound, JobTimeout
from ..models.registry import Registry, load_registry
from ..spec import DecodeRequest, JobInfo, JobStatus, ResultObject
from ..store import ObjectStore, open_store
from ..validate import validate_latent
from ..wire import latent_to_bytes
from .status import job_info

__all__ = ["Client", "Job"]


class Job:
    """A handle on one submitted job."""

    def __init__(self, client: Client, job_id: str, model: str, batch_id: str | None = None) -> None:
        self._client = client
        self.id = job_id
        self.model = model
        self.batch_id = batch_id

    def __repr__(self) -> str:
        return f"<latentq.Job {self.id} model={self.model}>"

    def info(self) -> JobInfo:
        return self._client.job_info(self.id)

    def status(self) -> JobStatus:
        return self.info().status

    def wait(self, timeout: float = 60.0, poll_interval: float = 0.02) -> list[ResultObject]:
        """Block until the job ends; return its results or raise JobFailed / JobTimeout."""
        deadline = time.monotonic() + timeout
        delay = poll_interval
        while True:
            info = self.info()
            if info.status is JobStatus.FINISHED:
                return info.results
            if info.status in (JobStatus.FAILED, JobStatus.CANCELED):
                raise JobFailed(self.id, info.error or info.status.value)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobTimeout(f"job {self.id} still {info.status.value} after {timeout} s")
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 0.5)

    def read(self, index: int = 0) -> bytes:
        """The bytes of one result object, read from the store."""
        results = self.info().results
        return self._client.store.get(results[index].key)


class Client:
    """Submit latents to the decode queues.

    >>> client = Client("redis://localhost:6379/0")
    >>> job = client.submit(latent, model="taef2", output_format="png")
    >>> job.wait()[0].url
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        settings: Settings | None = None,
        registry: Registry | None = None,
        store: ObjectStore | None = None,
        connection: Redis | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env(redis_url=redis_url)
        self.registry = registry or load_registry(self.settings.models_file)
        self._store = store
        self.connection = connection or Redis.from_url(self.settings.redis_url)
        self._queues: dict[str, Queue] = {}

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            self._store = open_store(self.settings.store, public_url=self.settings.public_url)
        return self._store

    def queue(self, model: str) -> Queue:
        if model not in self._queues:
            self._queues[model] = Queue(
                keys.queue_name(model), connection=self.connection, serializer=JSONSerializer
            )
        return self._queues[model]

    def submit(
        self,
        latent: torch.Tensor,
        model: str,
        output_format: str = "png",
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        metadata: dict[str, Any] | None = None,
        **options: Any,
    ) -> Job:
        """Validate one latent (with or without its batch dimension of 1) and enqueue its decode.

        ``options``: quality, height and width (packed FLUX latents), fps, preview, tile.
        """
        request = DecodeRequest(model=model, output_format=output_format, scaling_factor=scaling_factor,
                                shift_factor=shift_factor, metadata=metadata or {}, **options)  # fmt: skip
        return self.submit_request(latent, request)

    def submit_request(self, latent: torch.Tensor, request: DecodeRequest) -> Job:
        return self._enqueue([latent], request, batch_id=None)[0]

    def submit_many(
        self,
        latents: torch.Tensor | Sequence[torch.Tensor],
        model: str,
        output_format: str = "png",
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        metadata: dict[str, Any] | None = None,
        **options: Any,
    ) -> list[Job]:
        """One job per sample of a batch tensor or a list, grouped under one batch id."""
        if isinstance(latents, torch.Tensor):
            if latents.ndim < 2:
                raise InvalidLatent(f"submit_many needs a batch of latents, got shape {tuple(latents.shape)}")
            samples: list[torch.Tensor] = list(latents.unbind(0))
        else:
            samples = list(latents)
        if not samples:
            raise InvalidRequest("submit_many got no latents", field="latents")
        if len(samples) > self.settings.limits.max_batch_submit:
            raise InvalidRequest(
                f"submit_many got {len(samples)} latents, over the limit of {self.settings.limits.max_batch_submit}",
                field="latents",
            )
        request = DecodeRequest(model=model, output_format=output_format, scaling_factor=scaling_factor,
                                shift_factor=shift_factor, metadata=metadata or {}, **options)  # fmt: skip
        return self._enqueue(samples, request, batch_id=uuid.uuid4().hex)

    def _enqueue(self, latents: Iterable[torch.Tensor], request: DecodeRequest, batch_id: str | None) -> list[Job]:
        spec = self.registry.get(request.model)
        limits = self.settings.limits
        payloads = []
        for index, latent in enumerate(latents):
            try:
                tensor = validate_latent(latent, spec, request, limits)
            except InvalidRequest as exc:
                if batch_id is not None:
                    raise type(exc)(f"latent {index}: {exc}", field=exc.field) from None
                raise
            payloads.append((uuid.uuid4().hex, tensor))
        queue = self.queue(request.model)
        settings = self.settings
        job_datas = [
            Queue.prepare_data(
                TASK_FUNCTION,
                kwargs={
                    "request": request.to_dict(),
                    "latent_key": keys.latent_key(job_id),
                    "shape": list(tensor.shape),
                },
                job_id=job_id,
                timeout=settings.job_timeout,
                result_ttl=settings.result_ttl,
                failure_ttl=settings.failure_ttl,
                ttl=settings.latent_ttl,
                meta={"batch_id": batch_id} if batch_id else None,
                description=f"decode {request.model} -> {request.output_format}",
            )
            for job_id, tensor in payloads
        ]
        # The latents and the jobs land together or not at all.
        with self.connection.pipeline(transaction=True) as pipe:
            for job_id, tensor in payloads:
                pipe.set(keys.latent_key(job_id), latent_to_bytes(tensor), ex=settings.latent_ttl)
            if batch_id:
                batch = keys.batch_key(batch_id)
                pipe.rpush(batch, *[job_id for job_id, _ in payloads])
                pipe.expire(batch, settings.result_ttl)
            queue.enqueue_many(job_datas, pipeline=pipe)
            pipe.execute()
        return [Job(self, job_id, request.model, batch_id) for job_id, _ in payloads]

    def job(self, job_id: str) -> Job:
        info = self.job_info(job_id)
        return Job(self, job_id, info.model, info.batch_id)

    def job_info(self, job_id: str) -> JobInfo:
        try:
            rq_job = RQJob.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
        except NoSuchJobError:
            raise JobNotFound(f"no job {job_id!r}") from None
        model = (rq_job.kwargs or {}).get("request", {}).get("model", "")
        return job_info(rq_job, self.store.url, queue=self.queue(model) if model else None)

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
