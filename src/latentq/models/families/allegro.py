"""Allegro: ``AutoencoderKLAllegro`` (4 channels, 8x spatial, 4x temporal); it decodes only in tiles.

AllegroPipeline after denoising: ``decode_latents`` (``1 / scaling_factor * latents``, ``vae.decode``,
whose (B, F, 3, H, W) output is permuted to (B, 3, F, H, W)), then the crop
``video[:, :, :num_frames, :height, :width]`` to the size asked for, and ``postprocess_video``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...core.layouts import OutputGeometry
from ...errors import InvalidLatent
from .videobase import VideoFamily, scaling_of, to_video01, vae_call

if TYPE_CHECKING:
    from ...core.request import DecodeRequest
    from ..loader import LoadedModel
    from ..modelspec import ModelSpec

__all__ = ["FAMILY", "AllegroFamily"]


class AllegroFamily(VideoFamily):
    name = "allegro"
    options = ("num_frames",)

    def decoded_frames(self, spec: ModelSpec, latent_frames: int, request: DecodeRequest) -> int:
        frames = latent_frames * spec.temporal_factor  # the tiled decoder's output, before the crop
        return min(frames, request.num_frames) if request.num_frames else frames

    def check(self, latent: torch.Tensor, spec: ModelSpec, request: DecodeRequest) -> OutputGeometry:
        size = super().check(latent, spec, request)
        return OutputGeometry(min(size.width, request.width or size.width),
                              min(size.height, request.height or size.height), size.frames)  # fmt: skip

    def to_vae(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        module = model.module
        kernel = (module.kernel[0] // module.config.temporal_compression_ratio,
                  module.kernel[1] // module.spatial_compression_ratio,
                  module.kernel[2] // module.spatial_compression_ratio)  # fmt: skip
        if any(have < need for have, need in zip(latents.shape[2:], kernel, strict=True)):
            # Its tiled decoder would return zeros: refuse instead.
            raise InvalidLatent(f"latent {tuple(latents.shape)} is smaller than {model.spec.name}'s decode tile of "
                                f"{kernel} latent frames, rows, columns", field="latent")  # fmt: skip
        return 1 / scaling_of(model, request) * latents

    def decode(self, model: LoadedModel, z: torch.Tensor, request: DecodeRequest, *, tile: bool) -> torch.Tensor:
        video = vae_call(model, z, tile=True).permute(0, 2, 1, 3, 4)
        frames = request.num_frames or video.shape[2]
        height, width = request.height or video.shape[3], request.width or video.shape[4]
        return to_video01(video[:, :, :frames, :height, :width])


FAMILY = AllegroFamily()
