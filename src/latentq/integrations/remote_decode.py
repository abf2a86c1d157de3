"""Hugging Face's remote-VAE protocol (diffusers' ``remote_decode`` / ``remote_encode``) on latentq's queues.

The HTTP routes (``latentq.api.routes.remote``) and :func:`remote_decode` share this
module: both submit through the job service (:class:`~latentq.producer.service.JobService`,
what :class:`~latentq.Client` fronts), so a latent decoded either way goes through the
same queues, batching and workers as ``/v1/jobs`` and gives the same pixels.

This module submits the jobs and collects their outputs; parsing a request and choosing and
shaping the reply (the table of what diffusers' client expects) is
:mod:`latentq.integrations.remote_protocol`, whose public names are re-exported here.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image
from safetensors.torch import load as st_load

from ..core.request import DecodeRequest
from ..core.wire import TENSOR_NAME
from ..errors import InvalidLatent, JobTimeout, LatentqError
from ..producer.client import Client
from ..producer.job import Job
from ..producer.service import JobService
from ..state.tenants import Tenant
from .remote_protocol import (
    REPLY_CONTENT_TYPES,
    DecodePlan,
    RemoteResult,
    decode_scaling,
    encode_input,
    image_from_bytes,
    plan_decode,
    rescale_encoded,
    shape_reply_tensor,
    tensor_from_body,
    tensor_to_bytes,
)

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


# --- submit and collect ---------------------------------------------------------------------
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
        return RemoteResult(ids, tensor=rescale_encoded(latents, spec, *pending.scaling))
    plan = pending.plan
    assert plan is not None
    if plan.reply == "bytes":
        return RemoteResult(ids, data=datas[0], content_type=REPLY_CONTENT_TYPES[plan.output_format])
    if plan.reply == "audio":
        return RemoteResult(ids, tensor=torch.stack([st_load(data)["audio"] for data in datas]))
    images = [st_load(data)["image"] for data in datas]
    return RemoteResult(ids, tensor=shape_reply_tensor(plan.reply, images, pending.video))


def decode_latent(service: JobService, latent: torch.Tensor, model: str, *, timeout: float = DEFAULT_TIMEOUT_S,
                  **options: Any) -> RemoteResult:  # fmt: skip
    """Submit, wait, and shape the answer (``options``: those of :func:`submit_decode`, ``tenant`` too)."""
    return collect_reply(service, submit_decode(service, latent, model, **options), timeout)


# --- encode -------------------------------------------------------------------------------
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
