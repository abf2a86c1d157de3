"""Latents <-> safetensors bytes, with size and dtype limits.

Nothing is pickled: a latent travels as a one-tensor safetensors file; a video latent with its audio
(LTX-2: one MP4 with sound) as a two-tensor file, ``latent`` (or ``latents``) and ``audio_latents``. A body
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

from ..errors import InvalidLatent, LatentTooLarge
from .metadata import json_depth
from .request import ACCEPTED_DTYPES, Limits

__all__ = ["AUDIO_TENSOR_NAME", "MAX_DIMS", "MAX_HEADER_BYTES", "TENSOR_NAME", "check_shape", "check_tensor",
           "latent_from_bytes", "latent_to_bytes", "latents_from_bytes"]

TENSOR_NAME = "latent"
AUDIO_TENSOR_NAME = "audio_latents"  # the second tensor of a video + audio body
VIDEO_TENSOR_NAMES = (TENSOR_NAME, "latents")  # its video tensor: either name (the pipelines say "latents")
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


def latent_to_bytes(tensor: torch.Tensor, audio_latents: torch.Tensor | None = None) -> bytes:
    tensors = {TENSOR_NAME: tensor.detach().contiguous().cpu()}
    if audio_latents is not None:
        tensors[AUDIO_TENSOR_NAME] = audio_latents.detach().contiguous().cpu()
    return st_save(tensors)


def latent_from_bytes(data: bytes, limits: Limits) -> torch.Tensor:
    """Parse a one-tensor safetensors body, checking its header in full before allocating."""
    latent, audio = latents_from_bytes(data, limits)
    if audio is not None:
        raise InvalidLatent(f"body must hold exactly one tensor here, found 2 ({AUDIO_TENSOR_NAME} is taken by "
                            f"POST /v1/jobs, POST /v1/batches, Client.submit and submit_many)", field="body")  # fmt: skip
    return latent


def latents_from_bytes(data: bytes, limits: Limits) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Parse a one-tensor body, or a two-tensor one (a video latent and its ``audio_latents``): the latent and
    the audio latents (None for a one-tensor body), each checked as ``latent_from_bytes`` checks its one."""
    if len(data) > limits.max_body_bytes:
        raise LatentTooLarge(
            f"body is {len(data)} bytes, over the limit of {limits.max_body_bytes}", field="body"
        )
    header, size = _read_header(data)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(tensors) == 2:
        video_names = [name for name in VIDEO_TENSOR_NAMES if name in tensors]
        if AUDIO_TENSOR_NAME not in tensors or len(video_names) != 1:
            raise InvalidLatent(f"body must hold exactly one tensor, or {TENSOR_NAME!r} (or 'latents') and "
                                f"{AUDIO_TENSOR_NAME!r}; found {sorted(str(k)[:40] for k in tensors)}",
                                field="body")  # fmt: skip
        order = [video_names[0], AUDIO_TENSOR_NAME]
    elif len(tensors) == 1:
        order = list(tensors)
    else:
        raise InvalidLatent(f"body must hold exactly one tensor, found {len(tensors)}", field="body")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidLatent("body is not a valid safetensors file (__metadata__ must map names to strings)",
                            field="body")  # fmt: skip
    spans = []
    for name in order:
        field = AUDIO_TENSOR_NAME if name == AUDIO_TENSOR_NAME else "latent"
        spans.append((_check_entry(tensors[name], limits, field), field))
    # The tensors' data must tile the body exactly, in whichever order the writer laid them out.
    end = 0
    for (start, stop), _ in sorted(spans):
        if start != end:
            raise InvalidLatent("body is not a valid safetensors file (its tensors' data_offsets leave gaps or "
                                "overlap)", field="body")  # fmt: skip
        end = stop
    if 8 + size + end != len(data):
        raise InvalidLatent(f"body is not a valid safetensors file (data_offsets do not hold {end} bytes of data, "
                            f"or the body is not that long)", field="body")  # fmt: skip
    try:
        loaded = st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise InvalidLatent(f"body is not a valid safetensors file: {exc}", field="body") from exc
    checked = [check_tensor(loaded[name], limits, field=field) for name, (_, field) in zip(order, spans)]
    return checked[0], (checked[1] if len(checked) == 2 else None)


def _check_entry(info: object, limits: Limits, field: str) -> tuple[int, int]:
    """One tensor's header entry: shape, dtype, data_offsets consistent; returns its byte span."""
    if not isinstance(info, dict):
        raise InvalidLatent("body is not a valid safetensors file (a tensor entry is not an object)", field="body")
    count = check_shape(info.get("shape"), limits, field=field)
    dtype = info.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise InvalidLatent(f"body is not a valid safetensors file (unknown dtype {str(dtype)[:20]!r})", field="dtype")
    name, itemsize = DTYPES[dtype]
    if name not in ACCEPTED_DTYPES:
        raise InvalidLatent(f"{field} dtype {name} is not accepted; use one of {', '.join(ACCEPTED_DTYPES)}",
                            field="dtype")  # fmt: skip
    offsets, needed = info.get("data_offsets"), count * itemsize
    if (not isinstance(offsets, list) or len(offsets) != 2 or any(type(o) is not int for o in offsets)
            or offsets[0] < 0 or offsets[1] - offsets[0] != needed):  # fmt: skip
        raise InvalidLatent(f"body is not a valid safetensors file (data_offsets {str(offsets)[:60]} do not hold "
                            f"{needed} bytes of data, or the body is not that long)", field="body")  # fmt: skip
    return offsets[0], offsets[1]


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
