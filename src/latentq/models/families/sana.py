"""SANA (``SanaPipeline``, ``AutoencoderDC``, the deep-compression autoencoder: 32x spatial, 32 channels).

What the pipeline does after denoising (diffusers 0.42, ``pipeline_sana.py``)::

    image = vae.decode(latents / vae.config.scaling_factor)[0]
    if use_resolution_binning:   # the default: it denoised at the nearest trained aspect ratio
        image = PixArtImageProcessor.resize_and_crop_tensor(image, orig_width, orig_height)
    image = postprocess(image)   # [-1, 1] -> [0, 1]

Latents are (B, 32, h, w). A request's ``height`` and ``width``, when given, are the size the caller
asked the pipeline for: the decoded image is resized and center-cropped to it, as binning does.
``encode`` returns ``vae.encode(x).latent * scaling_factor`` (DC-AE's encoder is deterministic).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ...core.layouts import OutputGeometry
from ...errors import InvalidRequest
from .generic import GenericFamily, encode_scaled

if TYPE_CHECKING:
    from ...core.request import DecodeRequest
    from ..loader import LoadedModel
    from ..modelspec import ModelSpec

__all__ = ["FAMILY", "SanaFamily", "resize_and_crop"]


def resize_and_crop(samples: torch.Tensor, new_width: int, new_height: int) -> torch.Tensor:
    """``PixArtImageProcessor.resize_and_crop_tensor`` (bilinear resize to cover, then center crop)."""
    height, width = samples.shape[2], samples.shape[3]
    if (height, width) == (new_height, new_width):
        return samples
    ratio = max(new_height / height, new_width / width)
    resized_width, resized_height = int(width * ratio), int(height * ratio)
    samples = F.interpolate(samples, size=(resized_height, resized_width), mode="bilinear", align_corners=False)
    top, left = (resized_height - new_height) // 2, (resized_width - new_width) // 2
    return samples[:, :, top : top + new_height, left : left + new_width]


class SanaFamily(GenericFamily):
    """Layout ``image``; scaling from the spec (the VAE config's ``scaling_factor``); optional binning undo."""

    name = "sana"

    def check(self, latent: torch.Tensor, spec: ModelSpec, request: DecodeRequest) -> OutputGeometry:
        decoded = super().check(latent, spec, request)
        if (request.height is None) != (request.width is None):
            raise InvalidRequest("give both height and width (the size asked of the pipeline), or neither",
                                 field="height" if request.height is None else "width")  # fmt: skip
        if request.height is None or request.width is None:
            return decoded
        return OutputGeometry(request.width, request.height)

    def decode(self, model: LoadedModel, z: torch.Tensor, request: DecodeRequest, *, tile: bool) -> torch.Tensor:
        image = model.vae_decode(z, tile=tile)
        if request.height is not None and request.width is not None:
            image = resize_and_crop(image, request.width, request.height)  # on the raw [-1, 1] output
        return model.to_unit(image)

    def encode(self, model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        return encode_scaled(model, images)


FAMILY = SanaFamily()
