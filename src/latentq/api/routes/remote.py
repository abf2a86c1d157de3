"""Hugging Face's remote-VAE endpoints: diffusers' ``remote_decode`` and ``remote_encode`` work unchanged.

    remote_decode(endpoint=f"{api}/v1/models/sd15/decode", tensor=latent, scaling_factor=0.18215)
    remote_encode(endpoint=f"{api}/v1/models/sd15/encode", image=picture, scaling_factor=0.18215)

The request is what that client sends: the raw tensor bytes as the body, and
query parameters ``shape`` (repeated, one per dimension), ``dtype``,
``scaling_factor``, ``shift_factor``, ``do_scaling``, ``height``, ``width``,
``output_type``, ``image_format``, ``partial_postprocess``. The answer is image
or MP4 bytes, or raw tensor bytes with ``shape`` (JSON) and ``dtype`` headers;
errors are latentq's JSON error body (the client raises ``RuntimeError(response.json())``).
Jobs go through the same queues and workers as ``/v1/jobs`` (the job service, for the
request's tenant); the request waits for them (``timeout`` seconds, a latentq extension,
default 300) in the event loop, holding no thread.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ...core.wire import MAX_DIMS
from ...errors import InvalidLatent, InvalidRequest
from ...integrations.remote_decode import (
    DEFAULT_TIMEOUT_S,
    PendingReply,
    RemoteResult,
    collect_reply,
    decode_scaling,
    image_from_bytes,
    submit_decode,
    submit_encode,
    tensor_from_body,
    tensor_to_bytes,
)
from ..auth import request_tenant
from ..context import ApiContext, Context
from ..openapi import errors
from ..params import read_body

__all__ = ["router"]

MAX_TIMEOUT_S = 3600.0
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", "none", ""}

router = APIRouter()


def _bool(name: str, raw: str | None, default: bool) -> bool:
    if raw is None:
        return default
    value = raw.strip().lower()  # requests sends Python's str(bool): "True" / "False"
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise InvalidRequest(f"{name} must be true or false, got {raw!r}", field=name)


def _number(name: str, raw: str | None, kind: type[int] | type[float]) -> float | int | None:
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}",
                             field=name) from None  # fmt: skip
    if kind is float and (value != value or value in (float("inf"), float("-inf"))):
        raise InvalidRequest(f"{name} must be finite", field=name)
    return value


def _shape(values: list[str]) -> list[int]:
    """Repeated ``shape=1&shape=4...`` (what requests makes of a list); one "[1, 4, ...]" or "1,4,..." too."""
    if len(values) == 1:
        values = values[0].strip("[]() ").replace(",", " ").split()
    if len(values) > MAX_DIMS:
        raise InvalidLatent(f"shape has {len(values)} dimensions, at most {MAX_DIMS} are accepted", field="shape")
    try:
        return [int(v) for v in values]
    except ValueError:
        raise InvalidRequest(f"shape must be integers, got {str(values)[:100]}", field="shape") from None


def _timeout(raw: str | None) -> float:
    value = _number("timeout", raw, float)
    return DEFAULT_TIMEOUT_S if value is None else min(max(float(value), 0.0), MAX_TIMEOUT_S)


def _answer(result: RemoteResult) -> Response:
    headers = {"X-Latentq-Jobs": ",".join(result.job_ids)}
    if result.tensor is not None:
        tensor = result.tensor
        headers.update(shape=json.dumps(list(tensor.shape)), dtype=str(tensor.dtype).removeprefix("torch."))
        return Response(tensor_to_bytes(tensor), media_type="tensor/binary", headers=headers)
    return Response(result.data, media_type=result.content_type, headers=headers)


def _binary(*content_types: str) -> dict[str, Any]:
    """A 200 whose body is bytes of one of these types (tensor replies carry shape and dtype headers)."""
    schema = {"type": "string", "format": "binary"}
    return {"description": "The reply's bytes", "content": {kind: {"schema": schema} for kind in content_types}}


def _body(kind: str, description: str, *more: str) -> dict[str, Any]:
    schema = {"type": "string", "format": "binary"}
    content = {each: {"schema": schema} for each in (kind, *more)}
    return {"requestBody": {"required": True, "description": description, "content": content}}


_DECODE_RESPONSES = {200: _binary("image/jpeg", "image/png", "video/mp4", "tensor/binary"),
                     **errors(404, 408, 409, 413, 429, 502, 504)}  # fmt: skip
_ENCODE_RESPONSES = {200: _binary("tensor/binary"), **errors(404, 408, 409, 413, 429, 502, 504)}


async def _reply(ctx: ApiContext, pending: PendingReply, timeout: float) -> Response:
    """Wait for the jobs without holding a thread (the API's long-polls), then read and shape their outputs."""
    deadline = time.monotonic() + timeout
    for job_id in pending.job_ids:
        if not await ctx.long_polls.until_ended(job_id, max(0.0, deadline - time.monotonic())):
            break  # out of time: collect_reply cancels what has not started and raises JobTimeout
    # Out of time: JobTimeout, answered 504 (latentq.errors.HTTP_ERRORS).
    return _answer(await run_in_threadpool(collect_reply, ctx.service, pending, 0.0))


@router.post("/v1/models/{model}/decode", response_class=Response, responses=_DECODE_RESPONSES,
             openapi_extra=_body("application/octet-stream", "the tensor's raw little-endian bytes"),
             summary="diffusers remote_decode: raw tensor bytes in, image / tensor / MP4 bytes out")  # fmt: skip
async def remote_decode_route(
    request: Request,
    model: str,
    ctx: Context,
    shape: Annotated[list[str] | None, Query(description="the tensor's dimensions, repeated")] = None,
    dtype: Annotated[str | None, Query(description="float16, float32 or bfloat16")] = None,
    output_type: Annotated[str, Query(description="pil, pt, mp4 (video), wav or flac (audio)")] = "pil",
    image_format: Annotated[str, Query(description="jpg or png, for output_type=pil")] = "jpg",
    partial_postprocess: Annotated[str | None, Query(description="pt: uint8 pixels instead of floats")] = None,
    scaling_factor: Annotated[str | None, Query(description="latents / scaling_factor")] = None,
    shift_factor: Annotated[str | None, Query(description="then + shift_factor")] = None,
    do_scaling: Annotated[str | None, Query(description="deprecated: the model's own factors")] = None,
    height: Annotated[str | None, Query(description="image height, for packed latents")] = None,
    width: Annotated[str | None, Query(description="image width, for packed latents")] = None,
    quality: Annotated[str | None, Query(description="jpg / mp4 quality 1..100 (latentq)")] = None,
    timeout: Annotated[str | None, Query(description="seconds to wait (latentq, default 300)")] = None,
    num_frames: Annotated[str | None, Query(description="video frames (ltxvideo, cogvideox, allegro)")] = None,
    decode_timestep: Annotated[str | None, Query(description="ltxvideo / ltx2: decoder timestep")] = None,
    decode_noise_scale: Annotated[str | None, Query(description="ltxvideo / ltx2: decode noise")] = None,
    decode_noise_seed: Annotated[str | None, Query(description="ltxvideo / ltx2: its seed")] = None,
    decode_chunk_size: Annotated[str | None, Query(description="svd: frames per decoder call")] = None,
    audio_start_in_s: Annotated[str | None, Query(description="stableaudio: clip start, s")] = None,
    audio_end_in_s: Annotated[str | None, Query(description="stableaudio: clip end, s")] = None,
) -> Response:
    ctx.service.registry.get(model)  # unknown model: 404 before reading the body
    if not shape or dtype is None:
        raise InvalidRequest("give the tensor's shape and dtype as query parameters", field="shape")
    sf, shift = decode_scaling(_number("scaling_factor", scaling_factor, float),
                               _number("shift_factor", shift_factor, float),
                               _bool("do_scaling", do_scaling, False))  # fmt: skip
    # Accept: tensor/binary with output_type=pil means the client holds a processor and wants floats.
    wants_tensor = output_type == "pil" and "tensor/binary" in request.headers.get("accept", "")
    options = dict(
        output_type=output_type, image_format=image_format,
        partial_postprocess=_bool("partial_postprocess", partial_postprocess, False), processor=wants_tensor,
        scaling_factor=sf, shift_factor=shift, height=_number("height", height, int),
        width=_number("width", width, int), quality=90 if quality is None else _number("quality", quality, int),
        num_frames=_number("num_frames", num_frames, int),
        decode_timestep=_number("decode_timestep", decode_timestep, float),
        decode_noise_scale=_number("decode_noise_scale", decode_noise_scale, float),
        decode_noise_seed=_number("decode_noise_seed", decode_noise_seed, int),
        decode_chunk_size=_number("decode_chunk_size", decode_chunk_size, int),
        audio_start_in_s=_number("audio_start_in_s", audio_start_in_s, float),
        audio_end_in_s=_number("audio_end_in_s", audio_end_in_s, float),
    )  # fmt: skip
    dims = _shape(shape)  # before the body: a bad shape costs no upload
    limits = ctx.settings.limits
    body = await read_body(request, limits.max_body_bytes, limits.body_timeout_s)
    latent = tensor_from_body(body, dims, dtype, limits)
    pending = await run_in_threadpool(submit_decode, ctx.service, latent, model, tenant=request_tenant(request),
                                      **options)  # fmt: skip
    return await _reply(ctx, pending, _timeout(timeout))


@router.post("/v1/models/{model}/encode", response_class=Response, responses=_ENCODE_RESPONSES,
             openapi_extra=_body("image/png", "a PNG / JPEG / WebP image, or a raw tensor with shape and dtype",
                                 "image/jpeg", "application/octet-stream"),
             summary="diffusers remote_encode: a PNG / JPEG or raw tensor in, the latent's bytes out")  # fmt: skip
async def remote_encode_route(
    request: Request,
    model: str,
    ctx: Context,
    shape: Annotated[list[str] | None, Query(description="tensor body: its dimensions, repeated")] = None,
    dtype: Annotated[str | None, Query(description="tensor body: float16/32, bfloat16 in [0, 1], or uint8")] = None,
    scaling_factor: Annotated[str | None, Query(description="latents * scaling_factor")] = None,
    shift_factor: Annotated[str | None, Query(description="after latents - shift_factor")] = None,
    timeout: Annotated[str | None, Query(description="seconds to wait (latentq, default 300)")] = None,
) -> Response:
    ctx.service.registry.get(model)
    sf = _number("scaling_factor", scaling_factor, float)
    shift = _number("shift_factor", shift_factor, float)
    limits = ctx.settings.limits
    body = await read_body(request, limits.max_body_bytes, limits.body_timeout_s)
    if shape or dtype is not None:
        if not shape or dtype is None:
            raise InvalidRequest("a tensor body needs both shape and dtype", field="shape")
        image = tensor_from_body(body, _shape(shape), dtype, limits)
    else:
        image = await run_in_threadpool(image_from_bytes, body, limits)
    pending = await run_in_threadpool(submit_encode, ctx.service, image, model, tenant=request_tenant(request),
                                      scaling_factor=sf, shift_factor=shift)  # fmt: skip
    return await _reply(ctx, pending, _timeout(timeout))
