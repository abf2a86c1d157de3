"""The RQ job function. The batching worker never calls it (it decodes jobs in
batches itself), but it makes every queued job self-contained: a plain
``rq worker --serializer rq.serializers.JSONSerializer latentq.taef2`` can run
it one job at a time, loading the model once per process.
"""

from __future__ import annotations

import functools
from typing import Any

from rq import get_current_job

from ..config import Settings
from ..models.loader import LoadedModel, load_model
from ..models.registry import load_registry
from ..spec import DecodeRequest
from ..store import open_store
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
    records = store_output(open_store(settings.store), job.id, decode_request, decoded, token=output_token)
    job.connection.delete(latent_key)
    return {"results": records, "batch_size": 1, "decode_ms": decoded.decode_ms, "tiled": decoded.tiled}
