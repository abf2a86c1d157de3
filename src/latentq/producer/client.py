"""The Python producer: submit latents straight to Redis, get a Job handle back.

``Client`` is the SDK's face of :class:`~latentq.producer.service.JobService` (the HTTP API's job service
too): one tenant's submits, result URLs as the deployment makes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from redis import Redis
from rq import Queue

from ..config import Settings
from ..core.request import DecodeRequest, JobInfo, ResultObject
from ..models.registry import Registry
from ..state.connection import redis_unavailable
from ..state.deployment import Deployment
from ..state.records import RecordReader
from ..state.tenants import DEFAULT_TENANT, TenantDirectory
from ..store import ObjectStore
from .job import Job
from .service import JobService
from .waiter import DoneListener

__all__ = ["Client", "Job"]


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
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        """``tenant``: whose jobs this client submits (its limits apply; see ``latentq keys``)."""
        settings = settings or Settings.from_env(redis_url=redis_url)
        self._service = JobService(settings, registry=registry, store=store, connection=connection)
        self.tenant_name = tenant

    @property
    def service(self) -> JobService:
        """The job service this client fronts (the one the HTTP API uses, on this client's connection)."""
        return self._service

    # --- the deployment this client talks to -------------------------------------------------
    @property
    def settings(self) -> Settings:
        return self._service.settings

    @property
    def registry(self) -> Registry:
        return self._service.registry

    @property
    def connection(self) -> Redis:
        return self._service.connection

    @property
    def deployment(self) -> Deployment:
        return self._service.deployment

    @property
    def tenants(self) -> TenantDirectory:
        return self._service.tenants

    @property
    def store(self) -> ObjectStore:
        """The store given, else this process's store setting, else the deployment's (published in Redis
        by its workers, followed when it moves)."""
        return self._service.store

    @property
    def records(self) -> RecordReader:
        """Finished jobs' records in the store (what answers once Redis has dropped a job)."""
        return self._service.records

    def result_url(self, key: str) -> str | None:
        """The URL of a result: signed, through the deployment's API, for the local store (None when the
        deployment has no API); the store's own (presigned) URL for S3."""
        return self._service.result_url(key)

    def read_result(self, result: ResultObject) -> bytes:
        return self._service.read_result(result)

    def queue(self, model: str, priority: str = "normal") -> Queue:
        return self._service.queue(model, priority)

    def queued_count(self, model: str) -> int:
        return self._service.queued_count(model)

    def workers_serving(self, model: str) -> int:
        return self._service.workers_serving(model)

    # --- submit ---------------------------------------------------------------------
    def submit(
        self,
        latent: torch.Tensor,
        model: str,
        output_format: str = "png",
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        audio_latents: torch.Tensor | None = None,
        **options: Any,
    ) -> Job:
        """Validate one latent (with or without its batch dimension of 1) and enqueue its decode.

        ``options``: quality, height and width (packed FLUX latents), fps, preview, tile,
        priority ("normal" or "high"), deadline (unix time), callback_url.
        ``idempotency_key``: a retried submit with the same key (within 24 h) returns the first job.
        ``audio_latents``: the audio latents of the same video (LTX-2's), decoded by the model's
        ``audio_model`` and muxed into the one MP4 (``output_format="mp4"``).
        """
        request = DecodeRequest(model=model, output_format=output_format, scaling_factor=scaling_factor,
                                shift_factor=shift_factor, metadata=metadata or {}, **options)  # fmt: skip
        return self._service.submit(latent, request, tenant=self.tenant_name, idempotency_key=idempotency_key,
                                    audio_latents=audio_latents)  # fmt: skip

    def submit_encode(self, image: torch.Tensor, model: str, *, idempotency_key: str | None = None,
                      **options: Any) -> Job:  # fmt: skip
        """Encode an RGB image, (3, H, W) or (1, 3, H, W) float in [0, 1], into the model's latent."""
        request = DecodeRequest(model=model, output_format="tensor", task="encode", **options)
        return self._service.submit(image, request, tenant=self.tenant_name, idempotency_key=idempotency_key)

    def submit_many(
        self,
        latents: torch.Tensor | Sequence[torch.Tensor],
        model: str,
        output_format: str = "png",
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        audio_latents: torch.Tensor | Sequence[torch.Tensor] | None = None,
        **options: Any,
    ) -> list[Job]:
        """One job per sample of a batch tensor or a list, grouped under one batch id.

        ``audio_latents``: one per sample (a (B, ...) tensor or a list), each job's sound (as ``submit``'s)."""
        request = DecodeRequest(model=model, output_format=output_format, scaling_factor=scaling_factor,
                                shift_factor=shift_factor, metadata=metadata or {}, **options)  # fmt: skip
        return self._service.submit_many(latents, request, tenant=self.tenant_name, idempotency_key=idempotency_key,
                                         audio_latents=audio_latents)  # fmt: skip

    # --- status -----------------------------------------------------------------------
    @redis_unavailable()
    def job(self, job_id: str) -> Job:
        info = self.job_info(job_id)
        return Job(self._service, job_id, info.model, info.batch_id)

    def job_info(self, job_id: str) -> JobInfo:
        return self._service.job_info(job_id)

    def wait_for(self, job_id: str, timeout: float) -> JobInfo:
        """The job's status as soon as it ends, or at the timeout: woken by the worker's message, not polling."""
        return self._service.wait_for(job_id, timeout)

    def listener(self) -> DoneListener:
        """This Client's one listener for ended jobs (started by the first wait)."""
        return self._service.listener()

    def cancel(self, job_id: str) -> JobInfo:
        """Cancel a job that has not started; its latent is deleted. A started or ended job is a JobConflict."""
        return self._service.cancel(job_id)

    def batch_job_ids(self, batch_id: str) -> list[str]:
        return self._service.batch_job_ids(batch_id)

    def batch_info(self, batch_id: str) -> dict[str, Any]:
        """Counts per status and every job's status and results, for a submit_many batch."""
        return self._service.batch_info(batch_id)

    def close(self) -> None:
        """Drop the connections (webhooks of jobs ended here wait in Redis's outbox, not in this process)."""
        self._service.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
