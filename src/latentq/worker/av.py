"""Video with its sound from one job: a video latent and its ``audio_latents`` (LTX-2) -> one MP4.

The job's body holds two tensors (``latentq.core.wire``); the worker keeps them together as ``AVLatents``
through grouping (same video *and* audio shapes only), decodes the video as any job of the model,
the audio with the model's ``audio_model`` (loaded beside it by its family, on the first such job),
and muxes both: H.264 with an AAC track, or a lossless ALAC one at quality 100 (where the luma is
lossless too), so that the sound comes back sample for sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..core.request import DecodeRequest, Limits
from ..core.wire import latent_from_bytes, latents_from_bytes
from ..models.validate import validate_audio_latents, validate_image, validate_latent
from .encode import EXTENSIONS, EncodedObject, encode_mp4

if TYPE_CHECKING:
    from ..models.loader import LoadedModel
    from ..models.modelspec import ModelSpec
    from .encode import EncodedObject

__all__ = ["AVLatents", "DecodedAV", "decode_av_group", "encode_av_output", "parse_job_input", "shape_key",
           "video_of"]


@dataclass(frozen=True)
class AVLatents:
    """One job's video latent (batch dimension 1) with its audio latents (batch dimension 1)."""
    video: torch.Tensor
    audio: torch.Tensor


def video_of(latent: torch.Tensor | AVLatents) -> torch.Tensor:
    return latent.video if isinstance(latent, AVLatents) else latent


def shape_key(latent: torch.Tensor | AVLatents) -> tuple[Any, ...]:
    """What must be equal for jobs to share a decode call: the shapes and dtypes of every tensor."""
    if isinstance(latent, AVLatents):
        return tuple(latent.video.shape), latent.video.dtype, tuple(latent.audio.shape), latent.audio.dtype
    return tuple(latent.shape), latent.dtype


def parse_job_input(data: bytes, spec: ModelSpec, request: DecodeRequest,
                    limits: Limits) -> torch.Tensor | AVLatents:  # fmt: skip
    """A queued body, validated: an encode job's image, a latent, or a latent with its audio latents."""
    if request.task == "encode":
        return validate_image(latent_from_bytes(data, limits), spec, limits, vae_input=request.vae_input)
    latent, audio = latents_from_bytes(data, limits)
    if audio is None:
        return validate_latent(latent, spec, request, limits)
    audio = validate_audio_latents(audio, spec, request, limits)
    return AVLatents(validate_latent(latent, spec, request, limits), audio)


class DecodedAV:
    """One job's decoded video (the worker's own decoded-pixels record) and its audio, (channels, samples)
    float at ``sample_rate``."""
    def __init__(self, video: Any, audio: torch.Tensor, sample_rate: int) -> None:
        self.video = video
        self.audio = audio
        self.sample_rate = sample_rate

    @property
    def batch_size(self) -> int:
        return self.video.batch_size

    @property
    def decode_ms(self) -> float:
        return self.video.decode_ms

    @property
    def tiled(self) -> bool:
        return self.video.tiled


def output_sample_rate(model: LoadedModel) -> int:
    """The sample rate of an audio model's decoded output (a vocoder's may differ from its VAE's)."""
    family = model.family
    return int(family.output_sample_rate(model) if hasattr(family, "output_sample_rate") else family.sample_rate)


def decode_av_group(model: LoadedModel, requests: list[DecodeRequest], latents: list[AVLatents],
                    decode_video: Callable[[list[torch.Tensor]], list[Any]]) -> list[DecodedAV]:  # fmt: skip
    """The video as ``decode_video`` (the pipeline's decode of any group of the model) decodes it, then the
    audio in one call of the model's audio decoder (its family's ``audio_decoder``)."""
    videos = decode_video([latent.video for latent in latents])
    audio_model = model.family.audio_decoder(model)
    request = DecodeRequest(model=audio_model.spec.name, output_format="wav")
    audio = audio_model.decode(torch.cat([latent.audio for latent in latents], 0), request=request, tile=False)
    rate = output_sample_rate(audio_model)
    return [DecodedAV(video, audio[i].float().cpu(), rate) for i, video in enumerate(videos)]


def encode_av_output(decoded: DecodedAV, request: DecodeRequest) -> list[EncodedObject]:
    """One MP4 of the video with its sound (the record says both: frames, and sample rate / channels / duration)."""
    pixels = decoded.video.pixels.cpu()
    codec = "alac" if request.quality == 100 else "aac"  # lossless where the video is (luma) lossless
    data = encode_mp4(pixels, request.fps, request.quality, audio=decoded.audio, sample_rate=decoded.sample_rate,
                      audio_codec=codec)  # fmt: skip
    channels, samples = decoded.audio.shape
    return [EncodedObject(data, request.content_type, EXTENSIONS["mp4"], pixels.shape[2], pixels.shape[1],
                          pixels.shape[0], sample_rate=decoded.sample_rate, channels=channels,
                          duration_s=samples / decoded.sample_rate)]  # fmt: skip
