"""Qwen-Image (``QwenImagePipeline``, ``AutoencoderKLQwenImage``): packed image tokens in front of a 5-D video VAE.

What the pipeline does after denoising (diffusers 0.42, ``pipeline_qwenimage.py``)::

    latents = _unpack_latents(latents, height, width, 8)       # (B, seq, 64) -> (B, 16, 1, h, w)
    latents = latents / (1 / latents_std) + latents_mean       # per channel, from the VAE config
    image = vae.decode(latents)[0][:, :, 0]                    # the single frame
    image = VaeImageProcessor.postprocess(image)               # [-1, 1] -> [0, 1]

Latents arrive packed, (B, (H/16)*(W/16), 64) with the image height and width, or unpacked
(B, 16, h, w), which is also what ``encode`` returns (the img2img pipeline's ``_encode_vae_image``,
normalised, with the posterior's mode).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .generic import GenericFamily

if TYPE_CHECKING:
    from ...core.request import DecodeRequest
    from ..loader import LoadedModel

__all__ = ["FAMILY", "QwenImageFamily"]


def _stats(model: LoadedModel, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, 1 / std) shaped (1, z_dim, 1, 1, 1), as the pipeline builds them."""
    config = model.module.config
    shape = (1, config.z_dim, 1, 1, 1)
    mean = model.device_constant(("qwenimage.mean",), like, lambda: torch.tensor(config.latents_mean).view(shape))
    inv_std = model.device_constant(("qwenimage.inv_std",), like,
                                    lambda: 1.0 / torch.tensor(config.latents_std).view(shape).to(like.dtype))  # fmt: skip
    return mean, inv_std


class QwenImageFamily(GenericFamily):
    """Layout ``packed`` (FLUX.1's token order), normalisation from the VAE's ``latents_mean`` / ``latents_std``."""

    name = "qwenimage"

    def to_vae(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        z = self.unpack(model, latents, request).unsqueeze(2)  # (B, 16, 1, h, w)
        mean, inv_std = _stats(model, z)
        return z / inv_std + mean

    def decode(self, model: LoadedModel, z: torch.Tensor, request: DecodeRequest, *, tile: bool) -> torch.Tensor:
        return model.to_unit(model.vae_decode(z, tile=tile)[:, :, 0])

    @torch.inference_mode()
    def encode(self, model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        x = (images.to(model.device, model.dtype) * 2 - 1).unsqueeze(2)
        with model.lock:
            z = model.module.encode(x).latent_dist.mode().float()
        mean, inv_std = _stats(model, z)
        return ((z - mean) * inv_std)[:, :, 0].cpu()


FAMILY = QwenImageFamily()
