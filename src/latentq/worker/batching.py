"""One batch of started jobs, decoded: loaded, grouped per model and shape, decoded, handed to the encoders.

Each job's payload and input are read and re-validated (a bad job fails alone, at once; one past its
deadline expires). The jobs are grouped by model, then by latent shape and options within the batch size
and pixel budget (``pipeline.group_for_decode``); each group is one ``vae.decode`` (or one encoder call
for encode jobs). Previews are decoded first, by the model's tiny autoencoder, and published off the
decode path. MP4 jobs of a model that decodes chunk by chunk are encoded while they decode
(``video_stream``), when the encode pool has a thread for each. Every output then goes to the encode
pool (``finishing``).

Failure handling: an out-of-memory group is split in halves, a single job then falls back to tiled
decode; a group that fails otherwise is decoded one job at a time, so that one bad latent never fails
its neighbours.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import Protocol

from ..core.request import FailureKind, Limits
from ..errors import InvalidRequest
from ..models.loader import LoadedModel
from ..state import keys
from ..state.payload import JobPayload
from .decode_metrics import DecodeMetrics
from .faults import Faults
from .finishing import Finisher, reason
from .intake import Batch
from .model_cache import ModelCache
from .pipeline import (
    DecodedImage,
    decode_group,
    decode_preview,
    encode_group,
    group_for_decode,
    load_latent,
    streamable,
)
from .video_stream import GroupStream, StreamedVideo
from .work_item import WorkItem

__all__ = ["BatchSettings", "Batcher", "is_out_of_memory"]

log = logging.getLogger("latentq.worker")


class BatchSettings(Protocol):
    """What a batch uses of its worker: the models it serves (and their preview decoders), the limits its
    inputs are validated against, and the batching settings (read at each batch)."""

    models: ModelCache
    previews: dict[str, LoadedModel]
    limits: Limits
    max_batch: int
    max_batch_pixels: int | None
    encode_threads: int


class Batcher:
    def __init__(self, settings: BatchSettings, finisher: Finisher, decode_metrics: DecodeMetrics,
                 faults: Faults) -> None:  # fmt: skip
        self.settings = settings
        self.finisher = finisher
        self.decode_metrics = decode_metrics
        self.faults = faults

    def run(self, batch: Batch) -> None:
        """Decode the batch's jobs and hand their outputs to the encode pool (or fail them, each alone)."""
        by_model: dict[str, list[WorkItem]] = {}
        for item in batch.items:
            if self._load(item):
                by_model.setdefault(item.request.model, []).append(item)
        try:
            for model_name, ready in by_model.items():
                self._run_model(model_name, ready)
        finally:
            for item in batch.items:  # decoded: their inputs are not held while they are stored and committed
                item.blob = item.tensor = None

    def _load(self, item: WorkItem) -> bool:
        """Read the job's payload and its input, re-validated; False: the job ended (failed or expired)."""
        job = item.job
        try:
            model_name = keys.model_from_queue(job.origin) or ""
            payload = JobPayload.from_kwargs(job.id, job.kwargs)
            item.request = request = payload.request
            item.output_token = payload.output_token  # names its outputs (the same on a re-run)
            if request.model != model_name:
                raise InvalidRequest(f"job for model {request.model!r} found on queue {job.origin!r}")
            if request.deadline is not None and time.time() > request.deadline:
                self.finisher.expire(item)
                return False
            item.tensor = load_latent(item.blob, self.settings.models.spec(model_name), request, self.settings.limits)
            return True
        except Exception as exc:  # a bad job fails alone
            self.finisher.fail(item, reason(exc), permanent=True, failure=FailureKind.of(exc))
            return False

    def _run_model(self, model_name: str, ready: list[WorkItem]) -> None:
        """The jobs of one model. Under --model-memory-budget an evicted model is loaded again here, which
        can fail; no other model is referenced meanwhile (the load may evict it, and must free it)."""
        try:
            model = self.settings.models[model_name]
        except Exception as exc:
            free_memory()
            for item in ready:
                self.finisher.fail(item, f"cannot load model {model_name}: {reason(exc)}", permanent=False)
            return
        settings = self.settings
        for group in group_for_decode(ready, settings.max_batch, model.spec, settings.max_batch_pixels,
                                      inputs=lambda item: (item.request, item.tensor)):  # fmt: skip
            if group[0].request.task == "encode":
                self._encode(model, group)
                continue
            previews = self._previews(model_name, group)
            stream = self._open_streams(model, group, previews)
            try:
                results = self._decode(model, group, stream=stream)
            finally:
                if stream is not None:
                    stream.end()  # after decode_metrics counted the decode: its encoders may finish now
            for item, decoded in zip(group, results):
                if decoded is None or isinstance(decoded, StreamedVideo):  # failed, or its encoder has it
                    continue
                self.finisher.submit_decoded(model_name, item, decoded, previews.get(item.id))

    def _open_streams(self, model: LoadedModel, group: list[WorkItem],
                      previews: dict[str, Future]) -> GroupStream | None:  # fmt: skip
        """MP4 jobs of a model that decodes chunk by chunk: their encoders start now, on the pool, and take the
        frames as they are decoded (video_stream). Only with a thread per job: an encoder waits for frames."""
        requests, tensors = [item.request for item in group], [item.tensor for item in group]
        if len(group) > self.settings.encode_threads or not streamable(model, requests, tensors):
            return None
        stream = GroupStream(model.path, len(group))
        for item, video in zip(group, stream.videos):
            self.finisher.submit_stream(model.spec.name, item, video, previews.get(item.id))
        return stream

    def _decode(self, model: LoadedModel, group: list[WorkItem], force_tile: bool = False,
                stream: GroupStream | None = None) -> list[DecodedImage | None]:  # fmt: skip
        requests, tensors = [item.request for item in group], [item.tensor for item in group]
        try:  # with a stream (the first try only), the fallbacks below decode whole
            decoded = list(decode_group(model, requests, tensors, faults=self.faults, force_tile=force_tile,
                                        stream=stream))  # fmt: skip
            # On CUDA decode_group returns once the work is queued: the batch's time is observed once stored.
            self.decode_metrics.decoded(model.spec.name, [item.id for item in group])
            return decoded
        except Exception as exc:
            free_memory()
            if is_out_of_memory(exc) and len(group) > 1:
                half = len(group) // 2
                log.warning("out of memory decoding %d jobs; splitting into %d + %d", len(group), half, len(group) - half)
                return self._decode(model, group[:half], force_tile) + self._decode(model, group[half:], force_tile)
            if is_out_of_memory(exc) and not force_tile and hasattr(model.module, "use_tiling"):
                log.warning("out of memory decoding job %s alone; retrying with tiled decode", group[0].id)
                return self._decode(model, group, force_tile=True)
            if len(group) > 1:
                # Decode each alone so that one bad latent does not fail its neighbours.
                log.warning("batched decode of %d jobs failed (%s); decoding them one by one", len(group), exc)
                return [self._decode(model, [item], force_tile)[0] for item in group]
            why = reason(exc)
            if is_out_of_memory(exc):
                why = f"OutOfMemory: the decode does not fit on {model.device} even tiled ({exc})"
            log.error("decode failed for job %s: %s", group[0].id, why)
            self.finisher.fail(group[0], why, permanent=True, failure=FailureKind.of(exc))
            return [None]

    def _encode(self, model: LoadedModel, group: list[WorkItem]) -> None:
        try:
            latents = encode_group(model, [item.tensor for item in group], [item.request for item in group])
        except Exception as exc:
            for item in group:
                self.finisher.fail(item, reason(exc), permanent=True, failure=FailureKind.of(exc))
            return
        for item, latent in zip(group, latents):
            self.finisher.submit_encoded(model.spec.name, item, latent)

    def _previews(self, model_name: str, group: list[WorkItem]) -> dict[str, Future]:
        """Decode the group with the tiny autoencoder first and publish each preview off the decode path."""
        preview = self.settings.previews.get(model_name)
        if preview is None or not group[0].request.preview:
            return {}
        try:
            decoded = decode_preview(preview, self.settings.models[model_name], [item.request for item in group],
                                     [item.tensor for item in group])  # fmt: skip
        except Exception:  # a failed preview never fails the job
            log.warning("preview decode failed for %d jobs", len(group), exc_info=True)
            return {}
        return {item.id: self.finisher.submit_preview(item, image) for item, image in zip(group, decoded)}


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def free_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
