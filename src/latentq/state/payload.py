"""The job payload: what a queued job carries in RQ (its kwargs, JSON), versioned.

Producers write it, workers and the plain RQ task read it; nothing else
looks inside ``job.kwargs``. Version 0 is what producers before versioning
wrote (no version, no output token): still read.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from ..core.request import DecodeRequest
from . import keys

__all__ = ["PAYLOAD_VERSION", "JobPayload"]

PAYLOAD_VERSION = 1


@dataclass(frozen=True)
class JobPayload:
    request: DecodeRequest
    latent_key: str
    shape: list[int]
    # Names the job's output objects: a job decoded twice (its worker frozen, then re-queued) writes the
    # same keys, so no second copy of an output can appear; random, so result URLs stay unguessable.
    output_token: str | None = None
    version: int = PAYLOAD_VERSION

    @classmethod
    def new(cls, job_id: str, request: DecodeRequest, shape: list[int]) -> JobPayload:
        return cls(request=request, latent_key=keys.latent_key(job_id), shape=list(shape),
                   output_token=secrets.token_urlsafe(16))  # fmt: skip

    def to_kwargs(self) -> dict[str, Any]:
        """The RQ job's kwargs: the task function ``latentq.worker.tasks.decode_job`` takes exactly these."""
        return {"request": self.request.to_dict(), "latent_key": self.latent_key, "shape": list(self.shape),
                "output_token": self.output_token, "version": self.version}  # fmt: skip

    @classmethod
    def from_kwargs(cls, job_id: str, kwargs: dict[str, Any] | None) -> JobPayload:
        """Raises InvalidRequest (from DecodeRequest) when the request inside is not valid."""
        kwargs = kwargs or {}
        return cls(
            request=DecodeRequest.from_dict(kwargs.get("request") or {}),
            latent_key=kwargs.get("latent_key") or keys.latent_key(job_id),
            shape=list(kwargs.get("shape") or []),
            output_token=kwargs.get("output_token"),
            version=int(kwargs.get("version") or 0),
        )


def request_field(kwargs: dict[str, Any] | None, name: str, default: Any = None) -> Any:
    """One field of a job's request without validating the whole payload (status reads, logs, metrics)."""
    return ((kwargs or {}).get("request") or {}).get(name, default)


def latent_key_of(job_id: str, kwargs: dict[str, Any] | None) -> str:
    return (kwargs or {}).get("latent_key") or keys.latent_key(job_id)


__all__ += ["latent_key_of", "request_field"]
