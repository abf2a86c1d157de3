"""The RQ job function. The batching worker never calls it (it decodes jobs in
batches itself), but it makes every queued job self-contained: a plain
``rq worker --serializer rq.serializers.JSONSerializer latentq.taef2`` can run
it one job at a time, loading the model once per process.

There RQ's own worker owns the job's lifecycle (it marks the job finished or
failed after this function returns or raises), so no lease fences it. The
function adds what latentq's worker adds to a finished job: its record in the
store, the metrics, the latent's deletion and the done message
(``lifecycle.announce_finished``).
"""

from __future__ import annotations

import functools
from typing import Any

from rq import get_current_job

from ..config import Settings
from ..core.request import DecodeRequest, JobResult
from ..models.loader import LoadedModel, load_model
from ..models.registry import load_registry
from ..state import rqstate
from ..state.deployment import Deployment
from ..state.lifecycle import announce_finished
from ..state.records import write_record
from ..state.status import job_info
from .pipeline import decode_group, load_latent, store_output

__all__ = ["decode_job"]


@functools.lru_cache(maxsize=8)
def _model(name: str) -> LoadedModel:
    settings = Settings.from_env()
    return load_model(load_registry(settings.models_file).get(name))


def decode_job(request: dict[str, Any], latent_key: str, shape: list[int] | None = None,
               output_token: str | None = None, version: int = 0) -> dict[str, Any]:  # fmt: skip
    """The kwargs are a ``JobPayload``'s (``JobPayload.to_kwargs``)."""
    job = get_current_job()
    assert job is not None, "decode_job runs inside an RQ worker"
    settings = Settings.from_env()
    decode_request = DecodeRequest.from_dict(request)
    model = _model(decode_request.model)
    tensor = load_latent(job.connection.get(latent_key), model.spec, decode_request, settings.limits)
    (decoded,) = decode_group(model, [decode_request], [tensor])
    deployment = Deployment(job.connection, settings)
    store = deployment.open_store()  # its setting, else the deployment's (published by the workers)
    timings: dict[str, float] = {}
    records = store_output(store, job.id, decode_request, decoded, token=output_token, timings=timings)
    result = JobResult(records, batch_size=1, decode_ms=decoded.decode_ms, tiled=decoded.tiled).to_dict()
    job.ended_at = rqstate.now()
    write_record(store, job_info(job, lambda key: None, result=result))
    # Its webhook carries the deployment's result URLs (signed, through the API), never a file:// path.
    announce_finished(job.connection, job, timings, result, deployment.url_for(store))
    return result
