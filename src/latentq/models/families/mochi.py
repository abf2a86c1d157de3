"""Mochi 1: ``AutoencoderKLMochi`` (12 channels, 8x spatial, 6x temporal).

MochiPipeline after denoising: with ``latents_mean`` / ``latents_std`` in the VAE config,
``latents * std / scaling_factor + mean`` per channel, else ``latents / scaling_factor``; ``vae.decode``;
``postprocess_video``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .videobase import VideoFamily, scaling_of

if TYPE_CHECKING:
    from ...spec import DecodeRequest
    from ..loader import LoadedModel

__all__ = ["FAMILY", "MochiFamily"]


class MochiFamily(VideoFamily):
    name = "mochi"

    def to_vae(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        config = model.module.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            channels = latents.shape[1]
            mean = torch.tensor(mean).view(1, channels, 1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, channels, 1, 1, 1).to(latents.device, latents.dtype)
            return latents * std / scaling_of(model, request) + mean
        return latents / scaling_of(model, request)


FAMILY = MochiFamily()
