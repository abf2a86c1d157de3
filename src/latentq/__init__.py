"""latentq: queued, batched VAE decoding for latent diffusion models.

    from latentq import Client
    job = Client("redis://localhost:6379/0").submit(latent, model="taef2")
    results = job.wait()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import (
    ConfigError,
    InvalidLatent,
    InvalidRequest,
    JobConflict,
    JobFailed,
    JobNotFound,
    JobTimeout,
    LatentqError,
    LatentTooLarge,
    ModelLoadError,
    QueueFull,
    RateLimited,
    StoreError,
    Unavailable,
    UnknownModel,
    UnsupportedFormat,
)

if TYPE_CHECKING:  # static checkers see the real names; at run time they load on first use
    from .core.request import JobStatus, ResultObject
    from .integrations.pipeline_queue import RemoteDecodeQueue, submit_pipeline_latents
    from .integrations.remote_decode import remote_decode
    from .integrations.vae import RemoteVAE
    from .producer import AsyncHttpClient, AsyncHttpJob, Client, HttpClient, HttpJob, Job

__all__ = [
    "AsyncHttpClient",
    "AsyncHttpJob",
    "Client",
    "ConfigError",
    "HttpClient",
    "HttpJob",
    "InvalidLatent",
    "InvalidRequest",
    "Job",
    "JobConflict",
    "JobFailed",
    "JobNotFound",
    "JobStatus",
    "JobTimeout",
    "LatentTooLarge",
    "LatentqError",
    "ModelLoadError",
    "QueueFull",
    "RateLimited",
    "RemoteDecodeQueue",
    "RemoteVAE",
    "ResultObject",
    "StoreError",
    "Unavailable",
    "UnknownModel",
    "UnsupportedFormat",
    "__version__",
    "remote_decode",
    "submit_pipeline_latents",
]

# Lazy: the producer and remote modules import torch (seconds), which `latentq --help` never needs.
_LAZY = {
    "AsyncHttpClient": ".producer",
    "AsyncHttpJob": ".producer",
    "Client": ".producer",
    "HttpClient": ".producer",
    "HttpJob": ".producer",
    "Job": ".producer",
    "remote_decode": ".remote",
    "RemoteVAE": ".diffusers_vae",  # these two import diffusers too
    "RemoteDecodeQueue": ".pipeline_queue",
    "submit_pipeline_latents": ".pipeline_queue",
    "JobStatus": ".spec",
    "ResultObject": ".spec",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
