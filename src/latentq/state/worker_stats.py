"""A worker's stats in Redis (``keys.worker_stats_key``): what the worker writes and the console reads.

One hash per worker. The worker sets its identity when it starts (models, batch size, device) and its device
memory with each heartbeat; the decode loop, the committer and the lifecycle add to its counters. Every field
is named here once: writers use ``Counter`` and ``WorkerStats.identity``, readers ``WorkerStats.from_hash``.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["Counter", "WorkerStats"]


class Counter(str, enum.Enum):
    """The counters of a worker's stats hash (HINCRBY)."""

    DECODE_CALLS = "decode_calls"  # batched vae.decode calls
    DECODED_JOBS = "decoded_jobs"  # jobs those calls decoded
    FINISHED = "finished"  # jobs this worker finished (the lifecycle)
    FAILED = "failed"  # jobs it failed or sent back for a retry
    MODEL_LOADS = "model_loads"  # --model-memory-budget: loads and evictions
    MODEL_EVICTIONS = "model_evictions"
    COMPILE_EAGER_CALLS = "compile_eager_calls"  # --compile: calls past the compiled shapes, run eager
    ENCODE_WAIT_MS = "encode_wait_ms"  # the decode loop's wait for a free encoder


@dataclass(frozen=True)
class WorkerStats:
    """A worker's stats hash, read (``from_hash``); a field the worker has not written yet is None or 0."""

    models: tuple[str, ...] = ()
    max_batch: int | None = None
    device: str = "cpu"
    gpu_memory_used: int | None = None  # bytes, as of the last heartbeat (GPU workers)
    gpu_memory_total: int | None = None
    gpu_peak_allocated: int | None = None  # torch.cuda.max_memory_allocated, as of the last commit
    decode_calls: int = 0
    decoded_jobs: int = 0
    finished: int = 0
    failed: int = 0
    model_loads: int = 0
    model_evictions: int = 0
    compile_eager_calls: int = 0
    encode_wait_ms: int = 0

    @staticmethod
    def identity(models: list[str], max_batch: int, device: dict[str, Any]) -> dict[str, Any]:
        """The fields a worker sets when it starts: the HSET mapping (``device``: ``device_fields``' answer)."""
        return {"models": ",".join(models), "max_batch": max_batch, **device}

    @staticmethod
    def device_fields(device: str, memory: tuple[int, int] | None = None) -> dict[str, Any]:
        """The device field and, on a GPU, its memory in bytes (``memory``: free, total)."""
        fields: dict[str, Any] = {"device": device}
        if memory is not None:
            free, total = memory
            fields.update(gpu_memory_used=total - free, gpu_memory_total=total)
        return fields

    @classmethod
    def from_hash(cls, raw: dict[bytes | str, bytes | str]) -> WorkerStats:
        text = {_text(key): _text(value) for key, value in raw.items()}
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            value = text.get(field.name)
            if value in (None, ""):
                continue
            if field.name == "models":
                values["models"] = tuple(name for name in value.split(",") if name)
            elif field.name == "device":
                values["device"] = value
            else:
                values[field.name] = int(float(value))
        return cls(**values)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
