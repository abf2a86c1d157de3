"""Mochi 1: ``AutoencoderKLMochi`` (12 channels, 8x spatial, 6x temporal).

MochiPipeline after denoising: with ``latents_mean`` / ``latents_std`` in the VAE config,
``latents * std / scaling_factor + mean`` per channel, else ``latents / scaling_factor``; ``vae.decode``;
``postprocess_video``.

Encode (no image-to-video pipeline in diffusers): an image as a one-frame video, the posterior's MODE
(deterministic, the distribution's centre), normalised as the inverse of the decode step:
``(z - mean) * scaling_factor / std`` (``z * scaling_factor`` without statistics): (B, 12, 1, h, w).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .videobase import VideoFamily, encode_mode, scaling_of

if TYPE_CHECKING:
    from ...core.request import DecodeRequest
    from ..loader import LoadedModel

__all__ = ["FAMILY", "MochiFamily"]


class MochiFamily(VideoFamily):
    name = "mochi"

    def to_vae(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        config = model.module.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, latents.shape[1], 1, 1, 1)
            mean = model.device_constant(("mochi.mean", shape), latents, lambda: torch.tensor(mean).view(shape))
            std = model.device_constant(("mochi.std", shape), latents, lambda: torch.tensor(std).view(shape))
            return latents * std / scaling_of(model, request) + mean
        return latents / scaling_of(model, request)

    def encode(self, model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        latents = encode_mode(model, images)
        config = model.module.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            channels = latents.shape[1]
            mean = torch.tensor(mean).view(1, channels, 1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, channels, 1, 1, 1).to(latents.device, latents.dtype)
            return ((latents - mean) * config.scaling_factor / std).cpu()
        return (latents * config.scaling_factor).cpu()


FAMILY = MochiFamily()
