"""HunyuanVideo 1.5: ``AutoencoderKLHunyuanVideo15`` (32 channels, 16x spatial, 4x temporal).

HunyuanVideo15Pipeline after denoising: ``latents / vae.config.scaling_factor``, ``vae.decode``,
``postprocess_video``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .videobase import VideoFamily, scaling_of

if TYPE_CHECKING:
    from ...spec import DecodeRequest
    from ..loader import LoadedModel

__all__ = ["FAMILY", "HunyuanVideo15Family"]


class HunyuanVideo15Family(VideoFamily):
    name = "hunyuanvideo15"

    def to_vae(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        scaling = scaling_of(model, request)
        return latents / scaling


FAMILY = HunyuanVideo15Family()
