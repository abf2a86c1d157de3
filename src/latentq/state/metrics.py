"""Service metrics: workers record counters and histograms in Redis, the API renders Prometheus text.

Recording goes through Redis (one hash per model) rather than process memory
so that ``GET /metrics`` on any API replica sees what every worker on every
machine did. A histogram is kept as one counter per bucket (not cumulative)
plus a sum: an observation is two HINCRBYs, and ``render`` accumulates the
buckets into Prometheus' cumulative ``le`` series.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable

from redis import Redis
from redis.client import Pipeline

from . import keys

__all__ = ["HISTOGRAMS", "MetricsBatch", "finished_last_minute", "jobs_total", "record_status", "render"]

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HISTOGRAMS: dict[str, tuple[tuple[float, ...], str]] = {
    "batch_size": ((1, 2, 4, 8, 16, 32, 64), "Jobs per decode call"),
    "decode_seconds": (_SECONDS, "Time of one batched vae.decode call (on a GPU, its CUDA events' time)"),
    "encode_seconds": (_SECONDS, "Time to encode one job's output (PNG, JPEG, MP4...)"),
    "store_seconds": (_SECONDS, "Time to write one job's output objects to the store"),
    "job_latency_seconds": (_SECONDS, "End to end: enqueued to result stored"),
    "model_load_seconds": (_SECONDS, "Time to load the model onto a worker's device (at start, or after an eviction)"),
}
# Model switches under a worker's --model-memory-budget: loads and least-recently-used evictions, per model.
MODEL_EVENTS = {"load": "model_loads_total", "evict": "model_evictions_total"}
COMPILE_EAGER = "compile_eager_calls_total"
ENCODE_WAIT = "encode_wait_seconds_total"  # a decode loop waiting for a free encoder: encoding is the bottleneck
STATUSES = ("finished", "failed", "canceled", "expired")
WEBHOOK_OUTCOMES = ("delivered", "failed")
MINUTE_KEY_TTL = 16 * 60  # per-minute throughput counters: the console charts the last 15 minutes


def _bucket(bounds: tuple[float, ...], value: float) -> str:
    """The field of the first bucket whose upper bound holds ``value``."""
    for bound in bounds:
        if value <= bound:
            return f"{bound:g}"
    return "+Inf"


class MetricsBatch:
    """Observations gathered in memory, then written as one HINCRBY per touched hash field.

    A worker records a whole batch of jobs at once, in the same round trip that
    marks them finished.
    """

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._sums: Counter[tuple[str, str]] = Counter()
        self._finished: Counter[str] = Counter()  # per model, for the per-minute throughput counter

    def observe(self, model: str, name: str, value: float) -> None:
        key = keys.metrics_key(model)
        bounds, _ = HISTOGRAMS[name]
        self._counts[key, f"{name}_bucket:{_bucket(bounds, value)}"] += 1
        self._sums[key, f"{name}_sum"] += value

    def status(self, model: str, status: str, count: int = 1) -> None:
        self._counts[keys.metrics_key(model), f"jobs_total:{status}"] += count
        if status == "finished":
            self._finished[model] += count

    def job(self, model: str, *, encode_seconds: float, store_seconds: float, latency_seconds: float | None) -> None:
        self.observe(model, "encode_seconds", encode_seconds)
        self.observe(model, "store_seconds", store_seconds)
        if latency_seconds is not None and latency_seconds >= 0:
            self.observe(model, "job_latency_seconds", latency_seconds)

    def model_event(self, model: str, kind: str, seconds: float = 0.0) -> None:
        """A load (taking ``seconds``) or an eviction of ``model`` by a worker's model cache."""
        self._counts[keys.metrics_key(model), MODEL_EVENTS[kind]] += 1
        if kind == "load":
            self.observe(model, "model_load_seconds", seconds)

    def compile_eager_calls(self, model: str, calls: int) -> None:
        """Decoder calls of ``model`` that a ``--compile`` worker ran eager (shapes past its compiled bound)."""
        self._counts[keys.metrics_key(model), COMPILE_EAGER] += calls

    def encode_wait(self, model: str, seconds: float) -> None:
        """Time a worker's decode loop waited for an encode slot before handing on ``model``'s outputs."""
        self._sums[keys.metrics_key(model), ENCODE_WAIT] += seconds

    def write(self, pipe: Redis | Pipeline) -> None:
        for (key, field), count in self._counts.items():
            pipe.hincrby(key, field, count)
        for (key, field), total in self._sums.items():
            pipe.hincrbyfloat(key, field, total)
        minute = int(time.time() // 60)
        for model, count in self._finished.items():
            pipe.incrby(keys.finished_per_minute_key(model, minute), count)
            pipe.expire(keys.finished_per_minute_key(model, minute), MINUTE_KEY_TTL)
        self._counts.clear()
        self._sums.clear()
        self._finished.clear()


def record_status(connection: Redis | Pipeline, model: str, status: str, count: int = 1) -> None:
    connection.hincrby(keys.metrics_key(model), f"jobs_total:{status}", count)


def jobs_total(connection: Redis, model: str) -> dict[str, int]:
    """Jobs of a model that ended, by final status, since the counters began."""
    values = connection.hmget(keys.metrics_key(model), [f"jobs_total:{status}" for status in STATUSES])
    return {status: int(value or 0) for status, value in zip(STATUSES, values)}


def finished_last_minute(connection: Redis, model: str) -> float:
    """Jobs finished in about the last 60 s: this minute's count plus the unexpired share of the previous one."""
    now = time.time()
    minute = int(now // 60)
    current, previous = connection.mget(keys.finished_per_minute_key(model, minute),
                                        keys.finished_per_minute_key(model, minute - 1))  # fmt: skip
    elapsed = (now % 60) / 60
    return int(current or 0) + int(previous or 0) * (1 - elapsed)


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
    family("webhooks_total", "counter", "Webhooks of the model's jobs: delivered, or failed (given up)")
    for model in models:
        for outcome in WEBHOOK_OUTCOMES:  # counted by the webhook outbox (latentq.webhooks.outbox)
            value = hashes[model].get(f"webhooks_total:{outcome}", "0")
            out.append(f'latentq_webhooks_total{{model="{_escape(model)}",outcome="{outcome}"}} {value}')
    family("model_loads_total", "counter", "Loads of the model by workers (start, and reloads after evictions)")
    for model in models:
        out.append(f'latentq_model_loads_total{{model="{_escape(model)}"}} {hashes[model].get("model_loads_total", "0")}')
    family("model_evictions_total", "counter", "Evictions of the model by workers over their --model-memory-budget")
    for model in models:
        value = hashes[model].get("model_evictions_total", "0")
        out.append(f'latentq_model_evictions_total{{model="{_escape(model)}"}} {value}')
    family(COMPILE_EAGER, "counter", "Decoder calls a --compile worker ran eager (a latent shape past its compiled bound)")
    for model in models:
        out.append(f'latentq_{COMPILE_EAGER}{{model="{_escape(model)}"}} {hashes[model].get(COMPILE_EAGER, "0")}')
    family(ENCODE_WAIT, "counter", "Seconds workers' decode loops waited for a free encoder (rising: encoding "
           "is behind the decodes; raise --encode-threads)")  # fmt: skip
    for model in models:
        value = float(hashes[model].get(ENCODE_WAIT, 0))
        out.append(f'latentq_{ENCODE_WAIT}{{model="{_escape(model)}"}} {value:g}')
    for name, (bounds, help_text) in HISTOGRAMS.items():
        family(name, "histogram", help_text)
        for model in models:
            data, label = hashes[model], f'model="{_escape(model)}"'
            cumulative = 0
            for bound in (*bounds, math.inf):
                le = "+Inf" if bound == math.inf else f"{bound:g}"
                cumulative += int(data.get(f"{name}_bucket:{le}", 0))
                out.append(f'latentq_{name}_bucket{{{label},le="{le}"}} {cumulative}')
            out.append(f"latentq_{name}_sum{{{label}}} {float(data.get(f'{name}_sum', 0)):g}")
            out.append(f"latentq_{name}_count{{{label}}} {cumulative}")
    return "\n".join(out) + "\n"
