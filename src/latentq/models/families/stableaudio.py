"""Stable Audio Open: ``AutoencoderOobleck`` (64 channels, 2048 samples per latent step, 44.1 kHz stereo).

StableAudioPipeline after denoising: ``vae.decode(latents).sample``, then the clip asked for,
``audio[:, :, int(audio_start_in_s * sampling_rate) : int(audio_end_in_s * sampling_rate)]`` (the end
defaults to the transformer's whole window, i.e. all the decoded samples). No clipping: ``tensor``
outputs carry the raw samples; ``wav`` and ``flac`` are 16-bit, clipped to [-1, 1].
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ...core.layouts import OutputGeometry
from ...core.request import AUDIO_FORMATS
from ...errors import InvalidLatent, InvalidRequest
from . import Family
from .videobase import check_options, vae_call

if TYPE_CHECKING:
    from ...core.request import DecodeRequest
    from ..loader import LoadedModel
    from ..modelspec import ModelSpec

__all__ = ["FAMILY", "StableAudioFamily", "clip_bounds"]


def clip_bounds(request: DecodeRequest, sample_rate: int, samples: int, name: str) -> tuple[int, int]:
    """The pipeline's ``waveform_start`` / ``waveform_end`` for ``samples`` decoded samples."""
    start = int((request.audio_start_in_s or 0.0) * sample_rate)
    end = samples if request.audio_end_in_s is None else int(request.audio_end_in_s * sample_rate)
    if start >= samples:
        raise InvalidRequest(f"audio_start_in_s {request.audio_start_in_s:g} is past the end of the audio "
                             f"({samples / sample_rate:g} s)", field="audio_start_in_s")  # fmt: skip
    if end > samples:
        raise InvalidRequest(f"audio_end_in_s {request.audio_end_in_s:g} is past the end of the audio the latent "
                             f"holds ({samples / sample_rate:g} s) for model {name}", field="audio_end_in_s")  # fmt: skip
    return start, end


class StableAudioFamily(Family):
    name = "stableaudio"
    sample_rate = 44100  # the released VAE's; a model's own config decides (``output_sample_rate``)
    options = ("audio_start_in_s", "audio_end_in_s")

    def output_kind(self, spec: ModelSpec) -> str:
        return "audio"

    def output_formats(self, spec: ModelSpec) -> list[str]:
        return [*AUDIO_FORMATS, "tensor"]

    def describe_shape(self, spec: ModelSpec) -> list[Any]:
        return ["B", spec.latent_channels, "l"]

    def check(self, latent: torch.Tensor, spec: ModelSpec, request: DecodeRequest) -> OutputGeometry:
        check_options(spec, request, self.options)
        if latent.ndim != 3 or latent.shape[1] != spec.latent_channels:
            raise InvalidLatent(f"latent {tuple(latent.shape)} is not (B, {spec.latent_channels}, l); model "
                                f"{spec.name} decodes audio latents of that shape", field="latent")  # fmt: skip
        # width: decoded samples (temporal_factor is the VAE's hop length), before the clip
        return OutputGeometry(latent.shape[2] * spec.temporal_factor, 1)

    def output_sample_rate(self, model: LoadedModel) -> int:
        return int(model.module.config.sampling_rate)

    def to_vae(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        return latents  # the pipeline decodes its latents as they are

    def decode(self, model: LoadedModel, z: torch.Tensor, request: DecodeRequest, *, tile: bool) -> torch.Tensor:
        # The pipeline never tiles; a tiled decode is only made when a request asks for it.
        audio = vae_call(model, z, tile=bool(request.tile)).cpu()
        start, end = clip_bounds(request, self.output_sample_rate(model), audio.shape[-1], model.spec.name)
        return audio[:, :, start:end]


FAMILY = StableAudioFamily()
