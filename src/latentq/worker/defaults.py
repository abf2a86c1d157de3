"""A worker's batching and encoding defaults, by the device its models run on (its flags override each)."""

from __future__ import annotations

import os

__all__ = ["BATCH_DEFAULTS", "batch_settings", "gpu_encode_threads"]

# Defaults by where the models run (flags override each).
# GPU: batches of up to 8 within 16M output pixels, encoded by threads while the next batch decodes
# (``gpu_encode_threads``: PNG/WebP/MP4 encoders release the GIL, so threads scale with the cores).
# CPU: a decode call costs about its pixels whatever the batch, and large batches fall out of cache
# (TAEF2 at 128x128: +10% per image at batch 4, +20% at 8), so only small images batch. The decode
# already uses every core, and torch's threads stall when another thread preempts one of them, so
# results are encoded and marked finished in line, between decodes, not by threads beside them.
BATCH_DEFAULTS: dict[str, dict[str, int]] = {
    "cuda": {"max_batch": 8, "max_batch_pixels": 16 * 1024 * 1024},
    "cpu": {"max_batch": 32, "max_batch_pixels": 2 * 128 * 128, "encode_threads": 0},
}


def gpu_encode_threads(cpus: int | None = None) -> int:
    """A GPU worker's default encode threads: half the cores it may use, 4 to 16. One core encodes a 512 px
    PNG (compress level 1) in about 20 ms and a 1024 px one in 60 (WebP ~20 % more; JPEG 1-3 ms or nvJPEG):
    4 threads keep up with SD 1.5 512 px at about 70 images/s on an H200, more threads serve MP4s and
    1024 px PNGs at the same rates, and half the cores stay with the decode loop, Redis and the stores.
    ``latentq_encode_wait_seconds_total`` says when they fall behind."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(4, min(16, cpus // 2))


def batch_settings(on_gpu: bool, max_batch: int | None, max_batch_pixels: int | None,
                   encode_threads: int | None) -> tuple[int, int | None, int]:  # fmt: skip
    """A worker's max_batch, max_batch_pixels and encode_threads: its flags, the device's defaults where a flag
    is None (``max_batch_pixels``: where it is negative; None there is no pixel budget)."""
    defaults = BATCH_DEFAULTS["cuda" if on_gpu else "cpu"]
    max_batch = defaults["max_batch"] if max_batch is None else max_batch
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    if max_batch_pixels is not None and max_batch_pixels < 0:
        max_batch_pixels = defaults["max_batch_pixels"]
    if encode_threads is None:
        encode_threads = gpu_encode_threads() if on_gpu else defaults["encode_threads"]
    return max_batch, max_batch_pixels, encode_threads
