"""Latents <-> safetensors bytes, with size and dtype limits.

Nothing is pickled: a latent travels as a one-tensor safetensors file.
"""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import InvalidLatent, LatentTooLarge
from .spec import ACCEPTED_DTYPES, Limits

__all__ = ["TENSOR_NAME", "check_tensor", "latent_from_bytes", "latent_to_bytes"]

TENSOR_NAME = "latent"


def check_tensor(tensor: object, limits: Limits, *, field: str = "latent") -> torch.Tensor:
    """Dtype, size and finiteness checks that do not need the model spec."""
    if not isinstance(tensor, torch.Tensor):
        raise InvalidLatent(f"{field} must be a torch.Tensor, got {type(tensor).__name__}", field=field)
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in ACCEPTED_DTYPES:
        raise InvalidLatent(
            f"{field} dtype {dtype} is not accepted; use one of {', '.join(ACCEPTED_DTYPES)}", field="dtype"
        )
    if tensor.numel() > limits.max_latent_elements:
        raise LatentTooLarge(
            f"{field} has {tensor.numel()} elements, over the limit of {limits.max_latent_elements}",
            field=field,
        )
    if tensor.numel() == 0:
        raise InvalidLatent(f"{field} is empty (shape {tuple(tensor.shape)})", field=field)
    if not bool(torch.isfinite(tensor).all()):
        raise InvalidLatent(f"{field} contains NaN or Inf values", field=field)
    return tensor


def latent_to_bytes(tensor: torch.Tensor) -> bytes:
    return st_save({TENSOR_NAME: tensor.detach().contiguous().cpu()})


def latent_from_bytes(data: bytes, limits: Limits) -> torch.Tensor:
    """Parse a one-tensor safetensors body, checking sizes before allocating."""
    if len(data) > limits.max_body_bytes:
        raise LatentTooLarge(
            f"body is {len(data)} bytes, over the limit of {limits.max_body_bytes}", field="body"
        )
    header = _read_header(data)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(tensors) != 1:
        raise InvalidLatent(f"body must hold exactly one tensor, found {len(tensors)}", field="body")
    (info,) = tensors.values()
    shape = info.get("shape") if isinstance(info, dict) else None
    if not isinstance(shape, list):
        raise InvalidLatent("body is not a valid safetensors file (no tensor shape)", field="body")
    count = 1
    for dim in shape:
        count *= int(dim)
    if count > limits.max_latent_elements:
        raise LatentTooLarge(
            f"latent has {count} elements, over the limit of {limits.max_latent_elements}", field="latent"
        )
    try:
        loaded = st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise InvalidLatent(f"body is not a valid safetensors file: {exc}", field="body") from exc
    (tensor,) = loaded.values()
    return check_tensor(tensor, limits)


def _read_header(data: bytes) -> dict:
    if len(data) < 8:
        raise InvalidLatent("body is not a safetensors file (shorter than its 8-byte header)", field="body")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8 or size > 100_000_000:
        raise InvalidLatent("body is not a safetensors file (bad header length)", field="body")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidLatent("body is not a safetensors file (header is not JSON)", field="body") from exc
    if not isinstance(header, dict):
        raise InvalidLatent("body is not a safetensors file (header is not an object)", field="body")
    return header
