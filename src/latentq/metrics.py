"""Service metrics: workers record counters and histograms in Redis, the API renders Prometheus text.

Recording goes through Redis (one hash per model) rather than process memory
so that ``GET /metrics`` on any API replica sees what every worker on every
machine did.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from redis import Redis
from redis.client import Pipeline

from . import keys

__all__ = ["HISTOGRAMS", "record_job", "record_batch", "record_status", "render"]

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HISTOGRAMS: dict[str, tuple[tuple[float, ...], str]] = {
    "batch_size": ((1, 2, 4, 8, 16, 32, 64), "Jobs per decode call"),
    "decode_seconds": (_SECONDS, "Time of one batched vae.decode call"),
    "encode_seconds": (_SECONDS, "Time to encode one job's output (PNG, JPEG, MP4...)"),
    "store_seconds": (_SECONDS, "Time to write one job's output objects to the store"),
    "job_latency_seconds": (_SECONDS, "End to end: enqueued to result stored"),
}
STATUSES = ("finished", "failed", "canceled", "expired")


def _observe(pipe: Pipeline, key: str, name: str, value: float) -> None:
    bounds, _ = HISTOGRAMS[name]
    for bound in bounds:
        if value <= bound:
            pipe.hincrby(key, f"{name}_bucket:{bound:g}", 1)
    pipe.hincrby(key, f"{name}_bucket:+Inf", 1)
    pipe.hincrbyfloat(key, f"{name}_sum", value)
    pipe.hincrby(key, f"{name}_count", 1)


def record_batch(pipe: Pipeline, model: str, batch_size: int, decode_seconds: float) -> None:
    key = keys.metrics_key(model)
    _observe(pipe, key, "batch_size", batch_size)
    _observe(pipe, key, "decode_seconds", decode_seconds)


def record_job(pipe: Pipeline, model: str, *, encode_seconds: float, store_seconds: float,
               latency_seconds: float | None) -> None:  # fmt: skip
    key = keys.metrics_key(model)
    _observe(pipe, key, "encode_seconds", encode_seconds)
    _observe(pipe, key, "store_seconds", store_seconds)
    if latency_seconds is not None and latency_seconds >= 0:
        _observe(pipe, key, "job_latency_seconds", latency_seconds)


def record_status(connection: Redis | Pipeline, model: str, status: str, count: int = 1) -> None:
    connection.hincrby(keys.metrics_key(model), f"jobs_total:{status}", count)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(connection: Redis, models: Iterable[str], queue_depth: dict[str, int], workers: dict[str, int]) -> str:
    """Prometheus text exposition (version 0.0.4) of every model's metrics."""
    models = list(models)
    hashes = {}
    with connection.pipeline(transaction=False) as pipe:
        for model in models:
            pipe.hgetall(keys.metrics_key(model))
        for model, data in zip(models, pipe.execute()):
            hashes[model] = {k.decode(): v.decode() for k, v in data.items()}
    out: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP latentq_{name} {help_text}")
        out.append(f"# TYPE latentq_{name} {kind}")

    family("queue_depth", "gauge", "Jobs waiting in the model's queue")
    for model in models:
        out.append(f'latentq_queue_depth{{model="{_escape(model)}"}} {queue_depth.get(model, 0)}')
    family("workers_alive", "gauge", "Live workers serving the model")
    for model in models:
        out.append(f'latentq_workers_alive{{model="{_escape(model)}"}} {workers.get(model, 0)}')
    family("jobs_total", "counter", "Jobs that ended, by final status")
    for model in models:
        for status in STATUSES:
            value = hashes[model].get(f"jobs_total:{status}", "0")
            out.append(f'latentq_jobs_total{{model="{_escape(model)}",status="{status}"}} {value}')
    for name, (bounds, help_text) in HISTOGRAMS.items():
        family(name, "histogram", help_text)
        for model in models:
            data, label = hashes[model], f'model="{_escape(model)}"'
            for bound in (*bounds, math.inf):
                le = "+Inf" if bound == math.inf else f"{bound:g}"
                out.append(f'latentq_{name}_bucket{{{label},le="{le}"}} {data.get(f"{name}_bucket:{le}", "0")}')
            out.append(f"latentq_{name}_sum{{{label}}} {float(data.get(f'{name}_sum', 0)):g}")
            out.append(f"latentq_{name}_count{{{label}}} {data.get(f'{name}_count', '0')}")
    return "\n".join(out) + "\n"
