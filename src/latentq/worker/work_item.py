"""One job in a worker's hands, from its start to its end: what every step of the worker passes along."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rq import Queue
from rq.executions import Execution
from rq.job import Job as RQJob

from ..core.request import DecodeRequest

__all__ = ["WorkItem"]


@dataclass(eq=False)
class WorkItem:
    """A started job: made by the intake with its input's bytes; its request, tensor and output token are
    read from its payload by the batch that decodes it (``batching``), which drops the bytes then, and the
    tensor once the batch is decoded."""

    job: RQJob
    queue: Queue
    execution: Execution
    token: str  # the lease token of the pop that took it: its start and its end are fenced by it
    blob: bytes | None = None  # its input as read at its start (None: gone from Redis)
    request: DecodeRequest | None = None
    tensor: Any = None  # its parsed and validated latent, image (encode) or latents with audio (av)
    output_token: str | None = None  # names its outputs (the same on a re-run)

    @property
    def id(self) -> str:
        return self.job.id

