"""The decode counters a worker gathers between its Redis writes: per-model metrics and the worker's stats.

They wait in memory for the next Redis write of a job's end (the committer's), rather than costing a
round trip of their own. A batch's decode time is observed when its first job is stored, not when
``decode_group`` returns: on CUDA that return is the launch, and the time is the items' own
``decode_ms`` (CUDA events), which storing a job has waited for already.
"""

from __future__ import annotations

import threading
from typing import Any

from ..state import metrics
from ..state.worker_stats import Counter
from .model_cache import ModelCache

__all__ = ["DecodeMetrics"]


class DecodeMetrics:
    def __init__(self, models: ModelCache, stats_key: str) -> None:
        self.models = models
        self.stats_key = stats_key
        self._metrics = metrics.MetricsBatch()
        self._stats: dict[Counter, int] = dict.fromkeys((Counter.DECODE_CALLS, Counter.DECODED_JOBS, Counter.MODEL_LOADS,
                                                          Counter.MODEL_EVICTIONS, Counter.COMPILE_EAGER_CALLS,
                                                          Counter.ENCODE_WAIT_MS), 0)  # fmt: skip
        # job id -> [model, not yet observed], one list shared by the jobs of a batch
        self._batches: dict[str, list] = {}
        self._lock = threading.Lock()

    def decoded(self, model: str, job_ids: list[str]) -> None:
        """One decode call for these jobs was launched (its time is observed by ``stored``)."""
        with self._lock:
            self._stats[Counter.DECODE_CALLS] += 1
            self._stats[Counter.DECODED_JOBS] += len(job_ids)
            self._metrics.observe(model, "batch_size", len(job_ids))
            batch = [model, True]
            self._batches.update((job_id, batch) for job_id in job_ids)

    def stored(self, job_id: str, decode_ms: float | None) -> None:
        """A decoded job was stored (``decode_ms``: its batch's time) or dropped (None): the first of a batch
        observes the batch's decode time; every job's entry is forgotten."""
        with self._lock:
            batch = self._batches.pop(job_id, None)
            if batch is not None and batch[1] and decode_ms is not None:
                batch[1] = False
                self._metrics.observe(batch[0], "decode_seconds", decode_ms / 1000)

    def encode_wait(self, model: str, seconds: float) -> None:
        """The decode loop waited ``seconds`` for a free encoder before handing on a ``model`` output."""
        with self._lock:
            self._metrics.encode_wait(model, seconds)
            self._stats[Counter.ENCODE_WAIT_MS] += round(seconds * 1000)

    def write(self, pipe: Any) -> None:
        """Add the counters gathered since the last write to ``pipe``."""
        with self._lock:
            for event in self.models.drain_events():  # model loads and evictions (the model cache)
                self._metrics.model_event(event.model, event.kind, event.seconds)
                self._stats[Counter.MODEL_LOADS if event.kind == "load" else Counter.MODEL_EVICTIONS] += 1
                if event.eager_calls:
                    self._metrics.compile_eager_calls(event.model, event.eager_calls)
                    self._stats[Counter.COMPILE_EAGER_CALLS] += event.eager_calls
            for model in self.models.values():  # --compile: decoder calls past the compiled shapes' bound
                calls = model.compiled.drain_eager_calls() if model.compiled is not None else 0
                if calls:
                    self._metrics.compile_eager_calls(model.spec.name, calls)
                    self._stats[Counter.COMPILE_EAGER_CALLS] += calls
            if self.models.device.startswith("cuda"):
                pipe.hset(self.stats_key, "gpu_peak_allocated", _peak_allocated(self.models.device))
            self._metrics.write(pipe)
            for field, count in self._stats.items():
                if count:
                    pipe.hincrby(self.stats_key, field.value, count)
                    self._stats[field] = 0


def _peak_allocated(device: str) -> int:
    import torch

    return int(torch.cuda.max_memory_allocated(torch.device(device)))
