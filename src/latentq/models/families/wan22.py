"""Wan 2.2 TI2V-5B: ``AutoencoderKLWan`` with 48 channels, patchified inside the VAE (16x spatial).

WanPipeline after denoising: ``latents / (1 / latents_std) + latents_mean`` per channel from the VAE
config, ``vae.decode``, ``VideoProcessor.postprocess_video``. Encode: an image as WanImageToVideoPipeline's
``prepare_latents`` conditions on it (TI2V, ``expand_timesteps``): a one-frame video, the posterior's mode,
``(latents - latents_mean) * (1 / latents_std)``: (B, 48, 1, h, w).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .videobase import VideoFamily

if TYPE_CHECKING:
    from ...core.request import DecodeRequest
    from ..loader import LoadedModel
    from ..modelspec import ModelSpec

__all__ = ["FAMILY", "Wan22Family"]


def _statistics(model: LoadedModel, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents_mean, 1 / latents_std) as the Wan pipelines build them."""
    config = model.module.config
    shape = (1, config.z_dim, 1, 1, 1)
    mean = model.device_constant(("wan22.mean",), like, lambda: torch.tensor(config.latents_mean).view(shape))
    std = model.device_constant(("wan22.inv_std",), like,
                                lambda: 1.0 / torch.tensor(config.latents_std).view(shape).to(like.dtype))  # fmt: skip
    return mean, std


class Wan22Family(VideoFamily):
    name = "wan22"

    def has_encoder(self, spec: ModelSpec) -> bool:
        return spec.has_encoder

    def to_vae(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        mean, std = _statistics(model, latents)
        return latents / std + mean

    def encode(self, model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        video = (2.0 * images - 1.0).unsqueeze(2).to(model.device, model.dtype)  # VideoProcessor's normalize
        with model.lock, torch.inference_mode():
            latents = model.module.encode(video).latent_dist.mode().float()
        mean, std = _statistics(model, latents)
        return ((latents - mean) * std).cpu()


FAMILY = Wan22Family()
