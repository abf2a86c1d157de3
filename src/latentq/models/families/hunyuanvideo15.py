"""HunyuanVideo 1.5: ``AutoencoderKLHunyuanVideo15`` (32 channels, 16x spatial, 4x temporal).

HunyuanVideo15Pipeline after denoising: ``latents / vae.config.scaling_factor``, ``vae.decode``,
``postprocess_video``.

Encode: an image as HunyuanVideo15ImageToVideoPipeline's ``_get_image_latents`` conditions on it: a
one-frame video, the posterior's mode (``sample_mode="argmax"``), ``* scaling_factor``: (B, 32, 1, h, w).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .videobase import VideoFamily, encode_mode, scaling_of

if TYPE_CHECKING:
    from ...core.request import DecodeRequest
    from ..loader import LoadedModel

__all__ = ["FAMILY", "HunyuanVideo15Family"]


class HunyuanVideo15Family(VideoFamily):
    name = "hunyuanvideo15"

    def to_vae(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        scaling = scaling_of(model, request)
        return latents / scaling

    def encode(self, model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        return (encode_mode(model, images) * model.module.config.scaling_factor).cpu()


FAMILY = HunyuanVideo15Family()
