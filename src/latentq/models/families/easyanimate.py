"""EasyAnimate: ``AutoencoderKLMagvit`` (16 channels, 8x spatial, 4x temporal).

EasyAnimatePipeline after denoising: ``1 / vae.config.scaling_factor * latents``, ``vae.decode``,
``postprocess_video``.

Encode: an image as EasyAnimateInpaintPipeline / EasyAnimateControlPipeline encode their reference
videos: a one-frame video, the posterior's mode, ``* scaling_factor``: (B, 16, 1, h, w).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .videobase import VideoFamily, encode_mode, scaling_of

if TYPE_CHECKING:
    from ...core.request import DecodeRequest
    from ..loader import LoadedModel

__all__ = ["FAMILY", "EasyAnimateFamily"]


class EasyAnimateFamily(VideoFamily):
    name = "easyanimate"

    def to_vae(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        scaling = scaling_of(model, request)
        return 1 / scaling * latents

    def encode(self, model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        return (encode_mode(model, images) * model.module.config.scaling_factor).cpu()


FAMILY = EasyAnimateFamily()
