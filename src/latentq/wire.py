"""Latents <-> safetensors bytes, with size and dtype limits.

Nothing is pickled: a latent travels as a one-tensor safetensors file. A body
comes from anyone, so its header is checked in full (length, nesting, types,
sizes against the body's length) before anything is parsed deeply or
allocated: a malformed body raises InvalidLatent or LatentTooLarge, nothing else.
"""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import InvalidLatent, LatentTooLarge
from .spec import ACCEPTED_DTYPES, Limits, json_depth

__all__ = ["MAX_DIMS", "MAX_HEADER_BYTES", "TENSOR_NAME", "check_shape", "check_tensor", "latent_from_bytes",
           "latent_to_bytes"]

TENSOR_NAME = "latent"
MAX_HEADER_BYTES = 64 * 1024  # one tensor's header is ~100 bytes; the room is for __metadata__
MAX_HEADER_DEPTH = 4  # {"name": {"shape": [...]}} is 3
MAX_DIMS = 8  # latents have 3-5 dimensions
# safetensors' dtype codes -> (torch's name, bytes per element)
DTYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 1), "U8": ("uint8", 1), "I8": ("int8", 1), "F8_E5M2": ("float8_e5m2", 1),
    "F8_E4M3": ("float8_e4m3fn", 1), "I16": ("int16", 2), "U16": ("uint16", 2), "F16": ("float16", 2),
    "BF16": ("bfloat16", 2), "I32": ("int32", 4), "U32": ("uint32", 4), "F32": ("float32", 4),
    "F64": ("float64", 8), "I64": ("int64", 8), "U64": ("uint64", 8),
}  # fmt: skip


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
    """Parse a one-tensor safetensors body, checking its header in full before allocating."""
    if len(data) > limits.max_body_bytes:
        raise LatentTooLarge(
            f"body is {len(data)} bytes, over the limit of {limits.max_body_bytes}", field="body"
        )
    header, size = _read_header(data)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(tensors) != 1:
        raise InvalidLatent(f"body must hold exactly one tensor, found {len(tensors)}", field="body")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidLatent("body is not a valid safetensors file (__metadata__ must map names to strings)",
                            field="body")  # fmt: skip
    (info,) = tensors.values()
    if not isinstance(info, dict):
        raise InvalidLatent("body is not a valid safetensors file (a tensor entry is not an object)", field="body")
    count = check_shape(info.get("shape"), limits, field="latent")
    dtype = info.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise InvalidLatent(f"body is not a valid safetensors file (unknown dtype {str(dtype)[:20]!r})", field="dtype")
    name, itemsize = DTYPES[dtype]
    if name not in ACCEPTED_DTYPES:
        raise InvalidLatent(f"latent dtype {name} is not accepted; use one of {', '.join(ACCEPTED_DTYPES)}",
                            field="dtype")  # fmt: skip
    offsets, needed = info.get("data_offsets"), count * itemsize
    if offsets != [0, needed] or 8 + size + needed != len(data) or any(type(o) is not int for o in offsets):
        raise InvalidLatent(f"body is not a valid safetensors file (data_offsets {str(offsets)[:60]} do not hold "
                            f"{needed} bytes of data, or the body is not that long)", field="body")  # fmt: skip
    try:
        loaded = st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise InvalidLatent(f"body is not a valid safetensors file: {exc}", field="body") from exc
    (tensor,) = loaded.values()
    return check_tensor(tensor, limits)


def check_shape(shape: object, limits: Limits, *, field: str) -> int:
    """A tensor shape from outside: a list of at most MAX_DIMS non-negative ints; returns its element count."""
    if not isinstance(shape, list | tuple) or len(shape) > MAX_DIMS:
        raise InvalidLatent(f"{field} shape must be a list of at most {MAX_DIMS} integers", field=field)
    count = 1
    for dim in shape:
        if type(dim) is not int or dim < 0:  # bool, float (1e400 is inf), null, strings: no
            raise InvalidLatent(f"{field} shape must hold non-negative integers, got {str(dim)[:20]!r}", field=field)
        count *= min(dim, limits.max_latent_elements + 1)  # capped: a huge dimension makes no huge number
    if count > limits.max_latent_elements:
        raise LatentTooLarge(f"{field} has {_product(shape)} elements, over the limit of "
                             f"{limits.max_latent_elements}", field=field)  # fmt: skip
    return count


def _product(shape: list[int] | tuple[int, ...]) -> str:
    total = 1
    for dim in shape:
        total *= dim
        if total > 10**30:
            return "over 10^30"
    return str(total)


def _read_header(data: bytes) -> tuple[dict, int]:
    """The header object and its length, refused before json.loads if too long or nested too deep."""
    if len(data) < 8:
        raise InvalidLatent("body is not a safetensors file (shorter than its 8-byte header)", field="body")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8 or size > MAX_HEADER_BYTES:
        raise InvalidLatent(f"body is not a safetensors file (bad header length {size}; at most "
                            f"{MAX_HEADER_BYTES} and within the body)", field="body")  # fmt: skip
    try:
        text = data[8 : 8 + size].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidLatent("body is not a safetensors file (header is not JSON)", field="body") from exc
    if json_depth(text) > MAX_HEADER_DEPTH:
        raise InvalidLatent("body is not a safetensors file (header is nested too deep)", field="body")
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, or an int of over 4300 digits
        raise InvalidLatent("body is not a safetensors file (header is not JSON)", field="body") from exc
    if not isinstance(header, dict):
        raise InvalidLatent("body is not a safetensors file (header is not an object)", field="body")
    return header, size
