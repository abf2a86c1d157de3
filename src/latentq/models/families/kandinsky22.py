"""Kandinsky 2.2 (``KandinskyV22Pipeline`` and its img2img / inpaint / controlnet siblings; ``VQModel``, "movq").

What the pipeline does after denoising (diffusers 0.42, ``pipeline_kandinsky2_2.py``)::

    image = movq.decode(latents, force_not_quantize=True)["sample"]   # no scaling factor at all
    image = (image * 0.5 + 0.5).clamp(0, 1)

Latents are (B, 4, h, w), 8x spatial. ``encode`` returns ``movq.encode(x)["latents"]``, what the img2img
pipeline starts from (before it adds noise).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .generic import GenericFamily, encode_scaled

if TYPE_CHECKING:
    from ...core.request import DecodeRequest
    from ..loader import LoadedModel

__all__ = ["FAMILY", "KandinskyFamily"]


class KandinskyFamily(GenericFamily):
    """Layout ``image``, scaling 1 (the spec's), and the movq decode that skips quantisation."""

    name = "kandinsky22"

    def decode(self, model: LoadedModel, z: torch.Tensor, request: DecodeRequest, *, tile: bool) -> torch.Tensor:
        return model.decode_vae(z, tile=tile, force_not_quantize=True)

    def encode(self, model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        return encode_scaled(model, images)


FAMILY = KandinskyFamily()
