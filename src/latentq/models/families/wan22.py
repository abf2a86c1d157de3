"""Wan 2.2 TI2V-5B: ``AutoencoderKLWan`` with 48 channels, patchified inside the VAE (16x spatial).

WanPipeline after denoising: ``latents / (1 / latents_std) + latents_mean`` per channel from the VAE
config, ``vae.decode``, ``VideoProcessor.postprocess_video``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .videobase import VideoFamily

if TYPE_CHECKING:
    from ...spec import DecodeRequest
    from ..loader import LoadedModel

__all__ = ["FAMILY", "Wan22Family"]


class Wan22Family(VideoFamily):
    name = "wan22"

    def to_vae(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        config = model.module.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        return latents / std + mean


FAMILY = Wan22Family()
