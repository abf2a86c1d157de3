"""The steps of a decode, shared by the batching worker and the plain RQ task.

load latent bytes -> validate -> group by shape and options -> one batched
decode per group -> uint8 -> encode -> store. Each step is a function of its
inputs so both the batching loop and a single job can use it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InvalidLatent
from ..models.loader import LoadedModel, to_uint8
from ..models.registry import ModelSpec
from ..spec import DecodeRequest, Limits
from ..store import ObjectStore, make_key
from ..validate import validate_latent
from ..wire import latent_from_bytes
from .encode import encode_output

__all__ = ["DecodedImage", "group_for_decode", "load_latent", "decode_group", "store_output"]


def load_latent(data: bytes | None, spec: ModelSpec, request: DecodeRequest, limits: Limits) -> torch.Tensor:
    """Parse and re-validate a queued latent: the worker trusts nothing it pops."""
    if data is None:
        raise InvalidLatent("the job's latent is gone from Redis (expired or already consumed)", field="latent")
    return validate_latent(latent_from_bytes(data, limits), spec, request, limits)


def group_for_decode(items: list[tuple[Any, DecodeRequest, torch.Tensor]], max_batch: int) -> list[list[Any]]:
    """Split items into sub-batches sharing latent shape, dtype and decode options."""
    groups: dict[tuple, list] = defaultdict(list)
    for item in items:
        _, request, tensor = item
        groups[(request.batch_signature(), tuple(tensor.shape), tensor.dtype)].append(item)
    batches = []
    for members in groups.values():
        for start in range(0, len(members), max_batch):
            batches.append(members[start : start + max_batch])
    return batches


@dataclass
class DecodedImage:
    image: torch.Tensor  # (3, H, W) float in [0, 1]
    pixels: torch.Tensor  # (H, W, 3) uint8
    batch_size: int
    decode_ms: float
    extra: dict[str, Any] = field(default_factory=dict)


def decode_group(model: LoadedModel, requests: list[DecodeRequest], tensors: list[torch.Tensor]) -> list[DecodedImage]:
    """One ``vae.decode`` for a group of same-shape latents with the same options."""
    import time

    first = requests[0]
    started = time.perf_counter()
    images = model.decode(torch.cat(tensors, 0), first.scaling_factor, first.shift_factor)
    pixels = to_uint8(images)
    elapsed = (time.perf_counter() - started) * 1000
    return [DecodedImage(images[i], pixels[i], len(tensors), elapsed) for i in range(len(tensors))]


def store_output(store: ObjectStore, job_id: str, request: DecodeRequest, decoded: DecodedImage) -> dict[str, Any]:
    """Encode and store one job's output; return its JSON result record."""
    encoded = encode_output(decoded.image, decoded.pixels, request)
    key = make_key(job_id, encoded.ext)
    store.put(key, encoded.data, encoded.content_type)
    return {
        "key": key,
        "content_type": encoded.content_type,
        "width": encoded.width,
        "height": encoded.height,
        "bytes": len(encoded.data),
    }
