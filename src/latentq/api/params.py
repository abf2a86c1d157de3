"""What the submit routes share: the decode parameters (one query-string schema), the body's limits."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Header, Path, Query, Request
from torch import Tensor

from ..core.metadata import parse_metadata
from ..core.request import DecodeRequest, Limits
from ..core.wire import latents_from_bytes
from ..errors import InvalidRequest, LatentTooLarge
from ..models.registry import Registry
from ..store.base import KEY_PATTERN

__all__ = ["ID_PATTERN", "BatchId", "BodyTimeout", "IdempotencyKey", "JobId", "ResultKey", "decode_params", "read_body", "read_latents"]

# Ids are checked at the edge: nothing else (a dot, a NUL, an emoji) reaches RQ's keys or the store's paths.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
JobId = Annotated[str, Path(pattern=ID_PATTERN, description="a job id, as submit answered it")]
BatchId = Annotated[str, Path(pattern=ID_PATTERN, description="a batch id, as submit_many answered it")]
# A key outside its pattern is refused by check_key as an unknown object would be (404 naming key): a
# path like ``../../etc/passwd`` names nothing here. The pattern is still documented.
ResultKey = Annotated[str, Path(description="a result key, from a job's results",
                                json_schema_extra={"pattern": KEY_PATTERN.pattern})]  # fmt: skip


class BodyTimeout(InvalidRequest):
    """The client did not send its whole body within the body timeout (a slow or stalled upload)."""

    status_code = 408


def decode_params(
    model: Annotated[str, Query(description="model name, see GET /v1/models")],
    output_format: Annotated[str, Query(description="png, jpeg, webp, mp4, frames, wav, flac, tensor or uint8 (see the model's output_formats)")] = "png",
    scaling_factor: float | None = None,
    shift_factor: float | None = None,
    quality: Annotated[int, Query(ge=1, le=100)] = 90,
    metadata: Annotated[str | None, Query(description="a JSON object kept with the job")] = None,
    height: Annotated[int | None, Query(description="image height, for packed (FLUX) latents")] = None,
    width: Annotated[int | None, Query(description="image width, for packed (FLUX) latents")] = None,
    fps: Annotated[int, Query(ge=1, le=240, description="mp4 frame rate")] = 24,
    preview: Annotated[bool, Query(description="publish a tiny-autoencoder preview first")] = False,
    tile: Annotated[bool | None, Query(description="force tiled decode on or off (default: by size)")] = None,
    vae_input: Annotated[bool, Query(description="the latent is what the pipeline hands vae.decode: no unpacking or normalising")] = False,
    priority: Annotated[str, Query(description="normal or high")] = "normal",
    deadline: Annotated[float | None, Query(description="unix time; not started by then -> expired")] = None,
    callback_url: Annotated[str | None, Query(description="webhook URL for the job's final status")] = None,
    num_frames: Annotated[int | None, Query(description="video frames (ltxvideo tokens, cogvideox, allegro)")] = None,
    decode_timestep: Annotated[float | None, Query(description="ltxvideo: the decoder's timestep")] = None,
    decode_noise_scale: Annotated[float | None, Query(description="ltxvideo: decode noise mixed in")] = None,
    decode_noise_seed: Annotated[int | None, Query(description="ltxvideo: seed of that noise")] = None,
    decode_chunk_size: Annotated[int | None, Query(description="svd: frames per decoder call")] = None,
    audio_start_in_s: Annotated[float | None, Query(description="stableaudio: clip start, seconds")] = None,
    audio_end_in_s: Annotated[float | None, Query(description="stableaudio: clip end, seconds")] = None,
    task: Annotated[str, Query(description="decode, or encode: an image in ((1, 3, H, W) in [0, 1]; with "
                                           "vae_input what a pipeline hands vae.encode), its latent out")] = "decode",
) -> DecodeRequest:
    """A FastAPI dependency: the query string as a validated DecodeRequest.

    A plain ``def``: FastAPI runs it on a thread, where resolving callback_url's host may block.
    """
    meta = parse_metadata(metadata) if metadata else {}
    return DecodeRequest(model=model, output_format=output_format, scaling_factor=scaling_factor,
                         shift_factor=shift_factor, quality=quality, metadata=meta, height=height, width=width,
                         fps=fps, preview=preview, tile=tile, vae_input=vae_input, priority=priority, deadline=deadline,
                         callback_url=callback_url, num_frames=num_frames, decode_timestep=decode_timestep,
                         decode_noise_scale=decode_noise_scale, decode_noise_seed=decode_noise_seed,
                         decode_chunk_size=decode_chunk_size, audio_start_in_s=audio_start_in_s,
                         audio_end_in_s=audio_end_in_s, task=task)  # fmt: skip


async def read_latents(request: Request, decode_request: DecodeRequest, registry: Registry,
                       limits: Limits) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """A decode route's body: one latent, or a video's latent and its ``audio_latents`` (a two-tensor body);
    the model is checked first (404 before the body is read)."""
    registry.get(decode_request.model)
    return latents_from_bytes(await read_body(request, limits.max_body_bytes, limits.body_timeout_s), limits)


async def read_body(request: Request, limit: int, timeout: float = Limits.body_timeout_s) -> bytes:
    """The request body, refused as soon as it passes ``limit`` bytes or ``timeout`` seconds.

    The deadline covers the whole body: a client trickling a byte at a time would otherwise hold
    a connection (and its buffer) for as long as it likes.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise LatentTooLarge(f"body is {declared} bytes, over the limit of {limit}", field="body")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise LatentTooLarge(f"body is over the limit of {limit} bytes", field="body")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout(f"body not received within {timeout:g} s ({size} bytes arrived)", field="body") from None
    return b"".join(chunks)


IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=255,
           description="retry-safe submit: the same key (per tenant, within 24 h) returns the first submit's jobs"),
]  # fmt: skip
