"""Hugging Face's remote-VAE protocol, the part that touches no queue: parsing what a request sends, and
choosing and shaping what it gets back.

:mod:`latentq.integrations.remote_decode` submits the jobs and collects them with these (and re-exports
the public names); the HTTP routes (``latentq.api.routes.remote``) parse bodies with them.

What diffusers' client expects back, and the job format that produces it::

    output_type  processor  partial   reply                                               job format
    pil          no         -         jpg / png bytes                                     jpeg / png
    pil          yes        -         float [0, 1]: (B, 3, H, W); video (F, 3, H, W)      tensor
    pt           -          False     float [-1, 1] (the VAE's raw range, the processor
                                      denormalizes): (B, 3, H, W); video (B, 3, F, H, W)  tensor
    pt           -          True      uint8: (B, H, W, 3); video (F, H, W, 3)             uint8
    mp4          -          -         MP4 bytes (video models)                            mp4
    wav / flac   -          -         audio bytes (audio models; latentq's)               wav / flac
    pt (audio)   -          -         float (B, channels, samples), unclipped             tensor

Float replies are float32 (diffusers' endpoints sent float16 / bfloat16; the
client accepts all three, and float32 keeps the pixels exact).
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ..core.request import Limits
from ..core.wire import check_shape, check_tensor
from ..errors import InvalidLatent, InvalidRequest, LatentTooLarge, UnsupportedFormat
from ..models.registry import ModelSpec

__all__ = [
    "BODY_DTYPES",
    "IMAGE_BODY_FORMATS",
    "IMAGE_FORMATS",
    "OUTPUT_TYPES",
    "REPLY_CONTENT_TYPES",
    "DecodePlan",
    "RemoteResult",
    "decode_scaling",
    "encode_input",
    "image_from_bytes",
    "plan_decode",
    "rescale_encoded",
    "shape_reply_tensor",
    "tensor_from_body",
    "tensor_to_bytes",
]

OUTPUT_TYPES = ("pil", "pt", "mp4", "wav", "flac")
REPLY_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "mp4": "video/mp4", "wav": "audio/wav",
                       "flac": "audio/flac"}  # fmt: skip
IMAGE_FORMATS = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png"}  # diffusers says "jpg", our jobs say "jpeg"
BODY_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "uint8": torch.uint8,  # images for encode only; a latent in uint8 is refused by check_tensor
}
# What an encode body may be: the protocol sends PNG (or JPEG); other formats only widen the attack surface.
IMAGE_BODY_FORMATS = ("PNG", "JPEG", "WEBP")
# Decoding an image takes ~15 bytes per pixel at its peak (pixels, RGB copy, float tensor); at most this
# many at once, so concurrent encode requests cannot add up to gigabytes.
_IMAGE_DECODES = threading.BoundedSemaphore(2)


@dataclass(frozen=True)
class DecodePlan:
    output_format: str  # the job's output format
    reply: Literal["bytes", "float01", "float11", "uint8", "audio"]


@dataclass(frozen=True)
class RemoteResult:
    """What the endpoint answers: encoded bytes, or a tensor (sent raw with ``shape`` / ``dtype`` headers)."""

    job_ids: list[str]
    data: bytes | None = None
    content_type: str = "tensor/binary"
    tensor: torch.Tensor | None = None


# --- request parsing ----------------------------------------------------------------------
def tensor_from_body(body: bytes, shape: Sequence[int], dtype: str, limits: Limits) -> torch.Tensor:
    """The client's raw little-endian tensor bytes -> a tensor, after checking size against shape and dtype."""
    if dtype not in BODY_DTYPES:
        raise InvalidLatent(f"dtype {dtype[:20]!r} is not one of {', '.join(BODY_DTYPES)}", field="dtype")
    if not shape:
        raise InvalidLatent("shape is empty: give the tensor's dimensions", field="shape")
    count = check_shape(list(shape), limits, field="shape")
    torch_dtype = BODY_DTYPES[dtype]
    expected = count * torch_dtype.itemsize
    if len(body) != expected:
        raise InvalidLatent(
            f"body is {len(body)} bytes but shape {list(shape)} of {dtype} needs {expected}", field="shape"
        )
    if count == 0:
        raise InvalidLatent(f"shape {list(shape)} is empty", field="shape")
    return torch.frombuffer(bytearray(body), dtype=torch_dtype).reshape(list(shape))


def image_from_bytes(data: bytes, limits: Limits) -> torch.Tensor:
    """A PNG / JPEG / WebP body (what ``remote_encode`` sends for a PIL image) -> (1, 3, H, W) uint8.

    The size comes from the image's header and is checked against ``limits.max_encode_pixels``
    before any pixel is decoded: a 63 KB PNG can declare 4096x4096 zeros (50 MB decoded). The
    tensor stays uint8 (``encode_input`` scales it): a float copy here would quadruple the peak.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # our own limit is lower anyway
            picture = Image.open(io.BytesIO(data), formats=IMAGE_BODY_FORMATS)
    except Exception as exc:  # PIL raises several types for bad data, DecompressionBombError among them
        raise InvalidRequest(f"body is not a PNG, JPEG or WebP image, and no tensor shape and dtype were given: "
                             f"{str(exc)[:200]}", field="body") from None  # fmt: skip
    width, height = picture.size
    if width * height > limits.max_encode_pixels:  # from the header: before decoding the pixels
        raise LatentTooLarge(f"image is {width}x{height} = {width * height} pixels, over the encode limit of "
                             f"{limits.max_encode_pixels}", field="image")  # fmt: skip
    with _IMAGE_DECODES:
        try:
            picture.load()
            rgb = picture if picture.mode == "RGB" else picture.convert("RGB")
            array = torch.from_numpy(np.array(rgb, dtype=np.uint8))
        except Exception as exc:
            raise InvalidRequest(f"body is not a readable image: {str(exc)[:200]}", field="body") from None
        finally:
            picture.close()
    return array.permute(2, 0, 1)[None]


def encode_input(tensor: torch.Tensor, limits: Limits) -> torch.Tensor:
    """A tensor image for encode: uint8 0..255 or float in [0, 1] (latentq's image range), RGB."""
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255
    tensor = check_tensor(tensor, limits, field="image")
    low, high = float(tensor.min()), float(tensor.max())
    if low < -1e-3 or high > 1 + 1e-3:
        # Refuse rather than guess: a [-1, 1] tensor read as [0, 1] would encode a washed-out image.
        raise InvalidLatent(f"image tensor values lie in [{low:.3g}, {high:.3g}]; send RGB in [0, 1] "
                            "(from a [-1, 1] tensor: (x + 1) / 2) or uint8", field="image")  # fmt: skip
    return tensor.float().clamp(0, 1)


def tensor_to_bytes(tensor: torch.Tensor) -> bytes:
    """Raw bytes in the tensor's own dtype, what diffusers reads back with ``torch.frombuffer``."""
    return tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()


# --- what to answer, and its shape -----------------------------------------------------------
def decode_scaling(scaling_factor: float | None, shift_factor: float | None,
                   do_scaling: bool) -> tuple[float | None, float | None]:  # fmt: skip
    """The protocol's scaling rules -> the job's factors (None: the model's own).

    A given ``scaling_factor`` divides and a given ``shift_factor`` adds, nothing else; the
    deprecated ``do_scaling`` flag alone means "the model's factors"; neither means the
    latent arrives un-scaled already.
    """
    if scaling_factor is not None:
        return scaling_factor, 0.0 if shift_factor is None else shift_factor
    if do_scaling:
        return None, shift_factor
    return 1.0, 0.0 if shift_factor is None else shift_factor


def plan_decode(spec: ModelSpec, output_type: str, image_format: str, partial_postprocess: bool,
                processor: bool) -> DecodePlan:  # fmt: skip
    if output_type not in OUTPUT_TYPES:
        raise UnsupportedFormat(f"output_type {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}",
                                field="output_type")  # fmt: skip
    if spec.output_kind == "audio":
        if output_type in ("wav", "flac"):
            return DecodePlan(output_type, "bytes")
        if output_type == "pt":
            return DecodePlan("tensor", "audio")
        raise UnsupportedFormat(f"{spec.name} decodes audio: use output_type wav, flac or pt", field="output_type")
    if output_type in ("wav", "flac"):
        raise UnsupportedFormat(f"output_type {output_type!r} needs an audio model; {spec.name} decodes "
                                f"{spec.output_kind}", field="output_type")  # fmt: skip
    if output_type == "mp4":
        if not spec.is_video:
            raise UnsupportedFormat(f"output_type 'mp4' needs a video model; {spec.name} decodes images",
                                    field="output_type")  # fmt: skip
        return DecodePlan("mp4", "bytes")
    if output_type == "pt":
        return DecodePlan("uint8", "uint8") if partial_postprocess else DecodePlan("tensor", "float11")
    if processor:  # the client sends Accept: tensor/binary and postprocesses itself
        return DecodePlan("tensor", "float01")
    if spec.is_video:
        raise UnsupportedFormat(f"{spec.name} is a video model: for output_type 'pil' pass a VideoProcessor as "
                                "`processor`, or use output_type 'mp4' or 'pt'", field="output_type")  # fmt: skip
    fmt = IMAGE_FORMATS.get(str(image_format).lower())
    if fmt is None:
        raise UnsupportedFormat(f"image_format {image_format!r} is not one of jpg, png", field="image_format")
    return DecodePlan(fmt, "bytes")


def shape_reply_tensor(reply: str, images: list[torch.Tensor], video: bool) -> torch.Tensor:
    """Each job's ``image`` ((3, [F,] H, W) float or ([F,] H, W, 3) uint8) -> the layout the client reshapes to."""
    if reply == "float11":
        return torch.stack(images) * 2 - 1
    if video:  # one sample (checked before submitting): frames first
        return images[0].permute(1, 0, 2, 3).contiguous() if reply == "float01" else images[0]
    return torch.stack(images)


def rescale_encoded(latent: torch.Tensor, spec: ModelSpec, scaling_factor: float | None,
                    shift_factor: float | None) -> torch.Tensor:  # fmt: skip
    """Our encode jobs return the model's scaled latent; the protocol scales only by what was passed.

    A family with an encoder of its own (``spec.family``) returns what its pipeline conditions on
    (some scaled, some not, some normalised by statistics): that is answered as it is.
    """
    if spec.normalization != "scale_shift" or spec.family is not None:
        return latent
    scale = 1.0 if scaling_factor is None else float(scaling_factor)
    shift = 0.0 if shift_factor is None else float(shift_factor)
    if (scale, shift) == (spec.scaling_factor, spec.shift_factor):
        return latent  # as stored: no rounding from undoing and redoing the same factors
    raw = latent / spec.scaling_factor + spec.shift_factor
    return (raw - shift) * scale
