"""Hugging Face's remote-VAE protocol (diffusers' ``remote_decode`` / ``remote_encode``) on latentq's queues.

The HTTP routes (``latentq.api.routes.remote``) and :func:`remote_decode` share this
module: both submit through the job service (:class:`~latentq.producer.service.JobService`,
what :class:`~latentq.Client` fronts), so a latent decoded either way goes through the
same queues, batching and workers as ``/v1/jobs`` and gives the same pixels.

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
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load as st_load

from ..core.request import DecodeRequest, Limits
from ..core.wire import TENSOR_NAME, check_shape, check_tensor
from ..errors import InvalidLatent, InvalidRequest, JobTimeout, LatentqError, LatentTooLarge, UnsupportedFormat
from ..models.registry import ModelSpec
from ..producer.client import Client
from ..producer.job import Job
from ..producer.service import JobService
from ..state.tenants import Tenant

__all__ = [
    "DecodePlan",
    "PendingReply",
    "RemoteResult",
    "collect_reply",
    "decode_latent",
    "decode_scaling",
    "encode_images",
    "encode_input",
    "image_from_bytes",
    "plan_decode",
    "remote_decode",
    "submit_decode",
    "submit_encode",
    "tensor_from_body",
    "tensor_to_bytes",
]

DEFAULT_TIMEOUT_S = 300.0
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


# --- decode -------------------------------------------------------------------------------
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


def _reply_tensor(reply: str, images: list[torch.Tensor], video: bool) -> torch.Tensor:
    """Each job's ``image`` ((3, [F,] H, W) float or ([F,] H, W, 3) uint8) -> the layout the client reshapes to."""
    if reply == "float11":
        return torch.stack(images) * 2 - 1
    if video:  # one sample (checked before submitting): frames first
        return images[0].permute(1, 0, 2, 3).contiguous() if reply == "float01" else images[0]
    return torch.stack(images)


def _wait_all(service: JobService, jobs: list[Job], timeout: float) -> list[bytes]:
    """The first result object of every job; on timeout the jobs not started yet are canceled."""
    deadline = time.monotonic() + timeout
    out = []
    try:
        for job in jobs:
            results = job.wait(max(deadline - time.monotonic(), 0.0))
            out.append(service.store.get(results[0].key))
    except JobTimeout:
        for job in jobs:
            try:
                job.cancel()  # nobody will read it: free the queue slot
            except LatentqError:
                pass  # started or ended: let it finish
        ids = ", ".join(job.id for job in jobs)
        raise JobTimeout(f"not decoded within {timeout:g} s (job {ids}); queued jobs were canceled") from None
    return out


@dataclass(frozen=True)
class PendingReply:
    """Jobs submitted for one protocol request, and how to shape their outputs into the reply."""

    jobs: list[Job]
    kind: Literal["decode", "encode"]
    plan: DecodePlan | None = None
    video: bool = False
    scaling: tuple[float | None, float | None] = (None, None)  # encode: the factors the caller asked for

    @property
    def job_ids(self) -> list[str]:
        return [job.id for job in self.jobs]


def submit_decode(service: JobService, latent: torch.Tensor, model: str, *, tenant: Tenant | str | None = None,
                  output_type: str = "pil",
                  image_format: str = "jpg", partial_postprocess: bool = False, processor: bool = False,
                  scaling_factor: float | None = None, shift_factor: float | None = None,
                  height: int | None = None, width: int | None = None, quality: int = 90,
                  **family_options: Any) -> PendingReply:  # fmt: skip
    """Submit a protocol decode for ``tenant``: one job per sample of the batch. ``scaling_factor`` /
    ``shift_factor`` are the job's (see :func:`decode_scaling`); ``family_options``: the DecodeRequest fields
    some families read (num_frames, decode_timestep, audio_end_in_s, ...), None ones left out."""
    spec = service.registry.get(model)
    plan = plan_decode(spec, output_type, image_format, partial_postprocess, processor)
    # FLUX.1 takes packed (B, seq, 64) and unpacked (B, 16, h, w) latents: the family says which ndims.
    ndims = spec.family_impl.latent_ndims(spec)
    if isinstance(latent, torch.Tensor) and latent.ndim not in ndims and latent.ndim + 1 in ndims:
        latent = latent.unsqueeze(0)
    batch = latent.shape[0] if isinstance(latent, torch.Tensor) and latent.ndim in ndims else 1
    if batch > 1 and (plan.reply == "bytes" or (spec.is_video and plan.reply != "float11")):
        raise InvalidLatent(f"this output holds one sample; the latent has a batch of {batch}: send one per request",
                            field="latent")  # fmt: skip
    options: dict[str, Any] = dict(output_format=plan.output_format, scaling_factor=scaling_factor,
                                   shift_factor=shift_factor, height=height, width=width, quality=quality)  # fmt: skip
    options.update({name: value for name, value in family_options.items() if value is not None})
    request = DecodeRequest(model=model, **options)
    if batch > 1:  # slices keep their batch dimension: an unbound FLUX.1 (16, h, w) would read as packed
        jobs = service.submit_many([latent[i : i + 1] for i in range(batch)], request, tenant=tenant)
    else:
        jobs = [service.submit(latent, request, tenant=tenant)]
    return PendingReply(jobs, "decode", plan=plan, video=spec.is_video)


def collect_reply(service: JobService, pending: PendingReply, timeout: float) -> RemoteResult:
    """Wait (at most ``timeout`` s; 0 once the jobs have ended) and shape the reply as the protocol's endpoint does."""
    datas = _wait_all(service, pending.jobs, timeout)
    ids = pending.job_ids
    if pending.kind == "encode":
        spec = service.registry.get(pending.jobs[0].model)
        latents = torch.cat([st_load(data)[TENSOR_NAME] for data in datas]).float()
        return RemoteResult(ids, tensor=_rescale(latents, spec, *pending.scaling))
    plan = pending.plan
    assert plan is not None
    if plan.reply == "bytes":
        return RemoteResult(ids, data=datas[0], content_type=REPLY_CONTENT_TYPES[plan.output_format])
    if plan.reply == "audio":
        return RemoteResult(ids, tensor=torch.stack([st_load(data)["audio"] for data in datas]))
    images = [st_load(data)["image"] for data in datas]
    return RemoteResult(ids, tensor=_reply_tensor(plan.reply, images, pending.video))


def decode_latent(service: JobService, latent: torch.Tensor, model: str, *, timeout: float = DEFAULT_TIMEOUT_S,
                  **options: Any) -> RemoteResult:  # fmt: skip
    """Submit, wait, and shape the answer (``options``: those of :func:`submit_decode`, ``tenant`` too)."""
    return collect_reply(service, submit_decode(service, latent, model, **options), timeout)


# --- encode -------------------------------------------------------------------------------
def _rescale(latent: torch.Tensor, spec: ModelSpec, scaling_factor: float | None,
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


def submit_encode(service: JobService, images: torch.Tensor, model: str, *, tenant: Tenant | str | None = None,
                  scaling_factor: float | None = None, shift_factor: float | None = None) -> PendingReply:  # fmt: skip
    """(B, 3, H, W) or (3, H, W) images (uint8, or float in [0, 1]): one encode job per image, for ``tenant``."""
    service.registry.get(model)
    images = encode_input(images, service.settings.limits)
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise InvalidLatent(f"image must be (B, 3, H, W) or (3, H, W), got {tuple(images.shape)}", field="image")
    request = DecodeRequest(model=model, output_format="tensor", task="encode")
    jobs = [service.submit(images[i : i + 1], request, tenant=tenant) for i in range(images.shape[0])]
    return PendingReply(jobs, "encode", scaling=(scaling_factor, shift_factor))


def encode_images(service: JobService, images: torch.Tensor, model: str, *, tenant: Tenant | str | None = None,
                  scaling_factor: float | None = None, shift_factor: float | None = None,
                  timeout: float = DEFAULT_TIMEOUT_S) -> RemoteResult:  # fmt: skip
    """(B, 3, H, W) or (3, H, W) images (uint8, or float in [0, 1]) -> (B, C, h, w) float32 latents."""
    return collect_reply(service, submit_encode(service, images, model, tenant=tenant, scaling_factor=scaling_factor,
                                                shift_factor=shift_factor), timeout)  # fmt: skip


# --- the Python producer's remote_decode ------------------------------------------------------
def remote_decode(
    endpoint: str | None,
    tensor: torch.Tensor,
    processor: Any = None,
    do_scaling: bool = True,
    scaling_factor: float | None = None,
    shift_factor: float | None = None,
    output_type: Literal["mp4", "pil", "pt", "wav", "flac"] = "pil",
    return_type: Literal["mp4", "pil", "pt", "wav", "flac"] = "pil",
    image_format: Literal["png", "jpg"] = "jpg",
    partial_postprocess: bool = False,
    input_tensor_type: Literal["binary"] = "binary",
    output_tensor_type: Literal["binary"] = "binary",
    height: int | None = None,
    width: int | None = None,
    *,
    model: str,
    timeout: float = DEFAULT_TIMEOUT_S,
    client: Client | None = None,
) -> Any:
    """diffusers' ``remote_decode``, straight to latentq's queue instead of over HTTP.

    Same parameters and return values as ``diffusers.utils.remote_utils.remote_decode``
    (a PIL image, a list of them, a tensor or MP4 bytes), with these differences:

    - ``endpoint`` is a Redis URL, or None for ``$LATENTQ_REDIS_URL``; not an HTTP URL
      (for HTTP, point diffusers' own function at ``{api}/v1/models/{model}/decode``).
    - ``model=`` (required) names the latentq model that decodes.
    - ``timeout=`` seconds to wait for the decode (JobTimeout after it; queued jobs are
      canceled); ``client=`` reuses a :class:`~latentq.Client` instead of opening one.
    - Errors raise latentq's exceptions (``InvalidRequest``, ``JobFailed``, ...) rather
      than ``RuntimeError``.
    """
    del input_tensor_type, output_tensor_type  # binary is the only transfer here too
    if tensor.ndim == 3 and height is None and width is None:
        raise ValueError("`height` and `width` required for packed latents.")
    is_processor = processor is not None and hasattr(processor, "postprocess")
    if output_type == "pt" and return_type == "pil" and not partial_postprocess and not is_processor:
        raise ValueError("`processor` is required.")
    # What diffusers' client would send: factors only with do_scaling, the flag only without a factor.
    factors = decode_scaling(scaling_factor if do_scaling else None, shift_factor if do_scaling else None,
                             bool(do_scaling and scaling_factor is None))  # fmt: skip
    own = client or Client(endpoint)
    try:
        result = decode_latent(own.service, tensor, model, tenant=own.tenant_name, output_type=output_type,
                               image_format=image_format, partial_postprocess=partial_postprocess,
                               processor=processor is not None, scaling_factor=factors[0], shift_factor=factors[1],
                               height=height, width=width, timeout=timeout)  # fmt: skip
    finally:
        if client is None:
            own.close()
    return _client_output(result, processor, output_type, return_type, partial_postprocess)


def _client_output(result: RemoteResult, processor: Any, output_type: str, return_type: str,
                   partial_postprocess: bool) -> Any:  # fmt: skip
    """diffusers' ``postprocess_decode``, applied to what the endpoint would have answered."""
    output = result.tensor
    if output_type == "pt":
        assert output is not None
        if partial_postprocess:
            if return_type == "pt":
                return output
            images = [Image.fromarray(image.numpy()) for image in output]
            return images[0] if len(images) == 1 else images
        if processor is None or return_type == "pt":
            return output
        if hasattr(processor, "postprocess_video"):  # a VideoProcessor
            return processor.postprocess_video(output, output_type="pil")[0]
        return processor.postprocess(output, output_type="pil")[0]
    if output_type == "pil" and processor is None and return_type == "pil":
        assert result.data is not None
        picture = Image.open(io.BytesIO(result.data)).convert("RGB")
        picture.format = "png" if result.content_type == "image/png" else "jpeg"  # as diffusers' detect_image_type
        return picture
    if output_type == "pil" and processor is not None:
        assert output is not None
        if return_type == "pt":
            return output
        return [Image.fromarray(a) for a in (output.permute(0, 2, 3, 1).float().numpy() * 255).round().astype("uint8")]
    if output_type in ("mp4", "wav", "flac") and return_type == output_type:
        return result.data
    raise ValueError(f"output_type {output_type!r} with return_type {return_type!r} has no return value")
