"""The steps of a decode, shared by the batching worker and the plain RQ task.

load latent bytes -> validate -> group by shape and options -> one batched
decode per group -> uint8 -> encode -> store. Each step is a function of its
inputs so both the batching loop and a single job can use it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from ..core.request import IMAGE_FORMATS, DecodeRequest, Limits
from ..core.wire import latent_to_bytes
from ..errors import InvalidLatent
from ..models import chunked
from ..models.device_path import Pending, PendingSample, Timer
from ..models.loader import LoadedModel
from ..models.registry import ModelSpec
from ..models.validate import output_geometry
from ..store import ObjectStore, make_key
from .av import (
    AVLatents,
    DecodedAV,
    decode_av_group,
    encode_av_output,
    output_sample_rate,
    parse_job_input,
    shape_key,
    video_of,
)
from .encode import encode_audio_output, encode_output, gpu_jpeg_available
from .faults import Faults
from .vae_io import encode_vae_input
from .video_stream import GroupStream, StreamAborted, StreamedVideo

__all__ = [
    "DecodedAudio",
    "DecodedImage",
    "decode_group",
    "decode_preview",
    "encode_group",
    "group_for_decode",
    "load_latent",
    "sample_pixels",
    "store_latent",
    "store_output",
    "streamable",
]

T = TypeVar("T")


def load_latent(data: bytes | None, spec: ModelSpec, request: DecodeRequest, limits: Limits) -> torch.Tensor:
    """Parse and re-validate a queued latent (or an encode job's image): the worker trusts nothing it pops."""
    if data is None:
        raise InvalidLatent("the job's input is gone from Redis (expired or already consumed)", field="latent")
    return parse_job_input(data, spec, request, limits)  # a latent, an image, or a latent with its audio (av)


def sample_pixels(spec: ModelSpec, request: DecodeRequest, tensor: torch.Tensor | AVLatents) -> int:
    """Output pixels of one sample (times frames for video): what a decode's memory grows with."""
    if request.task == "encode":
        return tensor.shape[-1] * tensor.shape[-2]
    size = output_geometry(video_of(tensor), spec, request)
    return size.width * size.height * size.frames


def _triple(item: Any) -> tuple[DecodeRequest, Any]:
    return item[1], item[2]


def group_for_decode(items: Sequence[T], max_batch: int, spec: ModelSpec | None = None,
                     max_batch_pixels: int | None = None,
                     inputs: Callable[[T], tuple[DecodeRequest, Any]] = _triple) -> list[list[T]]:  # fmt: skip
    """Split items into sub-batches sharing latent shape, dtype and options, within a pixel budget.

    ``inputs`` gives an item's request and tensor (by default, items are ``(anything, request, tensor)``).
    The budget keeps a batch of large latents from running out of memory:
    many small images share one decode call, a few large ones get their own.
    """
    groups: dict[tuple, list[T]] = defaultdict(list)
    for item in items:
        request, tensor = inputs(item)
        groups[(request.batch_signature(), *shape_key(tensor))].append(item)
    batches = []
    for members in groups.values():
        size = max_batch
        if spec is not None and max_batch_pixels:
            request, tensor = inputs(members[0])
            size = max(1, min(max_batch, max_batch_pixels // max(1, sample_pixels(spec, request, tensor))))
        for start in range(0, len(members), size):
            batches.append(members[start : start + size])
    return batches


def encode_group(model: LoadedModel, tensors: list[torch.Tensor],
                 requests: list[DecodeRequest] | None = None) -> list[torch.Tensor]:  # fmt: skip
    """One batched encoder call for same-size images -> each job's latent (1, ...), float32 (the family's;
    for ``vae_input`` jobs, what ``vae.encode`` returns to a pipeline: ``vae_io``)."""
    if requests and requests[0].vae_input:
        latents = encode_vae_input(model, torch.cat(tensors, 0).float())
    else:
        latents = model.encode(torch.cat(tensors, 0).float())
    return [latents[i : i + 1].contiguous() for i in range(latents.shape[0])]


def store_latent(store: ObjectStore, job_id: str, latent: torch.Tensor, *,
                 token: str | None = None) -> list[dict[str, Any]]:  # fmt: skip

    data = latent_to_bytes(latent)
    key = make_key(job_id, "safetensors", token=token)
    store.put(key, data, "application/vnd.safetensors")
    return [{"key": key, "content_type": "application/vnd.safetensors", "width": latent.shape[-1],
             "height": latent.shape[-2], "bytes": len(data), "shape": list(latent.shape), "dtype": "float32"}]  # fmt: skip


class DecodedImage:
    """One job's decoded pixels: ``pixels`` ([F,] H, W, 3) uint8 and, when its output format needs it,
    ``image`` (3, [F,] H, W) float in [0, 1]. Either may be a ``Pending`` copy from the device (read on
    the encode thread, which waits for it then) and ``decode_ms`` a ``Timer`` read when the work is done."""
    def __init__(self, image: torch.Tensor | Pending | None, pixels: torch.Tensor | Pending, batch_size: int,
                 decode_ms: float | Timer, tiled: bool = False) -> None:  # fmt: skip
        self._image = image
        self._pixels = pixels
        self.batch_size = batch_size
        self._decode_ms = decode_ms
        self.tiled = tiled

    @property
    def pixels(self) -> torch.Tensor:
        return self._pixels.wait() if isinstance(self._pixels, Pending) else self._pixels

    @property
    def image(self) -> torch.Tensor:
        if self._image is None:
            raise ValueError("this decode kept no float pixels (its output format needs only uint8)")
        return self._image.wait() if isinstance(self._image, Pending) else self._image

    @property
    def decode_ms(self) -> float:
        return self._decode_ms.ms() if isinstance(self._decode_ms, Timer) else self._decode_ms


def needs_float(request: DecodeRequest) -> bool:
    """Whether a request's output is made from the float pixels (a tensor output), not only the uint8 ones."""
    return request.output_format == "tensor"


def _split(model: LoadedModel, images: torch.Tensor, requests: list[DecodeRequest], timer: float | Timer,
           tiled: bool) -> list[DecodedImage]:  # fmt: skip
    """A batch's [0, 1] images (wherever the family left them) -> each job's pixels, made uint8 where the
    images are; only the uint8 pixels (and the float ones, when a request needs them) are copied back."""
    path = model.path
    pixels = path.to_uint8(images)
    if pixels.device.type == "cuda" and all(r.output_format == "jpeg" for r in requests) and gpu_jpeg_available(pixels.device):
        batch_pixels = path.on_device(pixels)  # nvJPEG encodes them where they are
    else:
        batch_pixels = path.to_host(pixels)
    floats = path.to_host(images) if any(needs_float(r) for r in requests) else None
    if isinstance(timer, Timer):
        timer.stop()
    out = []
    for i in range(images.shape[0]):
        image = PendingSample(floats, i) if floats is not None else None
        out.append(DecodedImage(image, PendingSample(batch_pixels, i), len(requests), timer, tiled))
    return out


@dataclass
class DecodedAudio:
    """One job's audio, (channels, samples) float (raw: the pipeline does not clip), at ``sample_rate``."""
    audio: torch.Tensor
    sample_rate: int
    batch_size: int
    decode_ms: float
    tiled: bool = False


def _split_audio(model: LoadedModel, audio: torch.Tensor, elapsed_ms: float, tiled: bool) -> list[DecodedAudio]:
    rate = output_sample_rate(model)
    return [DecodedAudio(audio[i], rate, audio.shape[0], elapsed_ms, tiled) for i in range(audio.shape[0])]


def wants_tiling(model: LoadedModel, request: DecodeRequest, tensor: torch.Tensor) -> bool:
    if request.tile is not None:
        return request.tile and hasattr(model.module, "use_tiling")
    size = output_geometry(tensor, model.spec, request)
    return model.should_tile(size.width, size.height, size.frames)


def streamable(model: LoadedModel, requests: list[DecodeRequest], tensors: list[torch.Tensor]) -> bool:
    """Whether a group's MP4s can be encoded while it decodes (``decode_group`` with a ``GroupStream``)."""
    first = requests[0]
    return (not isinstance(tensors[0], AVLatents) and all(r.output_format == "mp4" for r in requests)
            and chunked.streams(model, first, wants_tiling(model, first, tensors[0])))  # fmt: skip


def decode_group(model: LoadedModel, requests: list[DecodeRequest], tensors: list[torch.Tensor],
                 *, faults: Faults | None = None, force_tile: bool = False,
                 stream: GroupStream | None = None) -> list[DecodedImage] | list[StreamedVideo]:  # fmt: skip
    """One ``vae.decode`` for a group of same-shape latents with the same options.

    With ``stream`` (the group's jobs' frame streams, ``streamable`` said yes), the frames go to the streams
    chunk by chunk and the jobs' ``StreamedVideo``s come back; a decode that fails aborts the streams."""
    if isinstance(tensors[0], AVLatents):  # video with its sound (worker.av): the video decoded here
        return decode_av_group(model, requests, tensors, lambda videos: decode_group(
            model, requests, videos, faults=faults, force_tile=force_tile))
    first = requests[0]
    tile = force_tile or wants_tiling(model, first, tensors[0])
    started = time.perf_counter()
    if stream is not None and not chunked.streams(model, first, tile):
        stream.abort(StreamAborted("not decoded chunk by chunk"))  # the encoders leave; decoded whole below
        stream = None
    try:
        if faults is not None:
            size = output_geometry(tensors[0], model.spec, first)
            faults.before_decode(len(tensors), size.width * size.height, tile)
        if stream is not None:
            timer = model.path.timer().start()
            chunked.decode_chunks(model, torch.cat(tensors, 0), first, stream.feed)
            return stream.decoded(timer.stop())
    except BaseException as exc:
        if stream is not None:
            stream.abort(exc)
        raise
    if model.spec.output_kind == "audio":
        audio = model.decode(torch.cat(tensors, 0), request=first, tile=tile)
        return _split_audio(model, audio, (time.perf_counter() - started) * 1000, tile)
    timer = model.path.timer().start()
    # The family unpacks and denormalises as its pipeline does (request: factors, height/width, frames);
    # the images stay on the device for the uint8 conversion.
    images = model.decode(torch.cat(tensors, 0), request=first, tile=tile, on_device=True)
    return _split(model, images, requests, timer, tile)


def decode_preview(preview: LoadedModel, full: LoadedModel, requests: list[DecodeRequest],
                   tensors: list[torch.Tensor]) -> list[DecodedImage]:  # fmt: skip
    """The tiny autoencoder's decode of the same latents (full model's unpacking, preview's scaling)."""
    first = requests[0]
    timer = preview.path.timer().start()
    images = preview.preview(full, torch.cat(tensors, 0), request=first)
    # A preview is always a still image (store_output): uint8 only.
    stills = [DecodeRequest(model=r.model, output_format=r.output_format if r.output_format in IMAGE_FORMATS else "jpeg")
              for r in requests]  # fmt: skip
    return _split(preview, images, stills, timer, False)


def store_output(store: ObjectStore, job_id: str, request: DecodeRequest,
                 decoded: DecodedImage | DecodedAudio | StreamedVideo,
                 *, preview: bool = False, timings: dict[str, float] | None = None,
                 token: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Encode and store one job's output objects; return their JSON result records.

    ``timings``, when given, receives the seconds spent encoding and storing; ``token``: the job's
    output token, which names its objects.
    """
    if preview:  # previews are always a still image (the first frame of a video)
        fmt = request.output_format if request.output_format in IMAGE_FORMATS else "jpeg"
        request = DecodeRequest(model=request.model, output_format=fmt, quality=85)
        pixels = decoded.pixels[0] if decoded.pixels.ndim == 4 else decoded.pixels
        decoded = DecodedImage(None, pixels, decoded.batch_size, decoded.decode_ms)
    records = []
    started = time.perf_counter()
    if isinstance(decoded, StreamedVideo):  # encoded as its frames came (video_stream), once
        outputs = decoded.encode(request)
    elif isinstance(decoded, DecodedAV):
        outputs = encode_av_output(decoded, request)
    elif isinstance(decoded, DecodedAudio):
        outputs = encode_audio_output(decoded.audio, decoded.sample_rate, request)
    else:
        outputs = encode_output(decoded.image if needs_float(request) else None, decoded.pixels, request)
    encoded_at = time.perf_counter()
    for index, encoded in enumerate(outputs):
        key = make_key(job_id, encoded.ext, f"p{index}" if preview else index, token)
        store.put(key, encoded.data, encoded.content_type)
        record = {"key": key, "content_type": encoded.content_type, "width": encoded.width,
                  "height": encoded.height, "bytes": len(encoded.data), "frames": encoded.frames}  # fmt: skip
        if encoded.frame is not None:
            record["frame"] = encoded.frame
        if encoded.sample_rate is not None:
            record.update(sample_rate=encoded.sample_rate, channels=encoded.channels, duration_s=encoded.duration_s)
        records.append(record)
    if timings is not None:  # a streamed video was encoded beside its decode: x264's own time
        timings["encode"] = decoded.encode_seconds if isinstance(decoded, StreamedVideo) else encoded_at - started
        timings["store"] = time.perf_counter() - encoded_at
    return records
