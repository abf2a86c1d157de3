"""Latent layouts: the shape a pipeline hands over, and how it becomes the VAE's input.

| layout  | pipeline latent              | to the VAE                                         |
| ------- | ---------------------------- | -------------------------------------------------- |
| image   | (B, C, h, w)                 | as is                                              |
| packed  | (B, h/2 * w/2, 4C) + H, W    | FLUX.1: FluxPipeline._unpack_latents               |
|         | or (B, C, h, w) unpacked     | as is (what Hugging Face's FLUX endpoint takes)    |
| flux2   | (B, h/2 * w/2, 4C) + H, W    | FLUX.2: unpack, batch-norm denormalise, unpatchify |
| video   | (B, C, f, h, w)              | as is (HunyuanVideo, Wan)                          |

Only torch here: the generic family (``latentq.models.families.generic``)
checks shapes with it in every process, and unpacks with it on workers (the batch-norm statistics of FLUX.2 come from the loaded
VAE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LAYOUTS", "OutputGeometry", "geometry", "unpack", "unpatchify_flux2"]

LAYOUTS = ("image", "packed", "flux2", "video")


@dataclass(frozen=True)
class OutputGeometry:
    width: int
    height: int
    frames: int = 1


def latent_ndim(layout: str) -> int:
    return {"image": 4, "packed": 3, "flux2": 3, "video": 5}[layout]


def describe_shape(layout: str, channels: int) -> list:
    return {
        "image": ["B", channels, "h", "w"],
        "packed": ["B", "(H/16)*(W/16)", channels * 4],
        "flux2": ["B", "(H/16)*(W/16)", channels * 4],
        "video": ["B", channels, "f", "h", "w"],
    }[layout]


def packed_grid(height: int | None, width: int | None, spatial_factor: int) -> tuple[int, int]:
    """(h, w) of the unpacked latent for an image of height x width, as diffusers computes it."""
    if not height or not width:
        raise ValueError("packed latents need the image height and width")
    return 2 * (int(height) // (spatial_factor * 2)), 2 * (int(width) // (spatial_factor * 2))


def geometry(layout: str, shape: tuple[int, ...], spatial_factor: int, temporal_factor: int = 1,
             height: int | None = None, width: int | None = None) -> OutputGeometry:  # fmt: skip
    """The decoded size of one sample of ``shape`` (which includes the batch dimension)."""
    if layout == "image":
        return OutputGeometry(shape[-1] * spatial_factor, shape[-2] * spatial_factor)
    if layout in ("packed", "flux2"):
        h, w = packed_grid(height, width, spatial_factor)
        return OutputGeometry(w * spatial_factor, h * spatial_factor)
    frames = (shape[2] - 1) * temporal_factor + 1
    return OutputGeometry(shape[-1] * spatial_factor, shape[-2] * spatial_factor, frames)


def _unpack_flux1(latents: torch.Tensor, height: int, width: int, spatial_factor: int) -> torch.Tensor:
    batch, _, channels = latents.shape
    h, w = packed_grid(height, width, spatial_factor)
    latents = latents.view(batch, h // 2, w // 2, channels // 4, 2, 2)
    latents = latents.permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(batch, channels // 4, h, w)


def unpatchify_flux2(latents: torch.Tensor) -> torch.Tensor:
    """(B, 4C, h, w) 2x2 patches -> (B, C, 2h, 2w), as Flux2Pipeline._unpatchify_latents."""
    batch, channels, h, w = latents.shape
    latents = latents.reshape(batch, channels // 4, 2, 2, h, w)
    latents = latents.permute(0, 1, 4, 2, 5, 3)
    return latents.reshape(batch, channels // 4, h * 2, w * 2)


def unpack(layout: str, latents: torch.Tensor, *, spatial_factor: int, height: int | None = None,
           width: int | None = None, bn_mean: torch.Tensor | None = None,
           bn_std: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Pipeline layout -> the VAE's latent layout (scaling is applied separately)."""
    if layout in ("image", "video"):
        return latents
    if layout == "packed":
        return _unpack_flux1(latents, height or 0, width or 0, spatial_factor)
    # flux2: tokens are in row-major (h, w) order, as Flux2Pipeline._prepare_latent_ids lays them out.
    batch, _, channels = latents.shape
    h, w = packed_grid(height, width, spatial_factor)
    patches = latents.reshape(batch, h // 2, w // 2, channels).permute(0, 3, 1, 2)
    if bn_mean is not None and bn_std is not None:
        patches = patches * bn_std.view(1, -1, 1, 1).to(patches) + bn_mean.view(1, -1, 1, 1).to(patches)
    return unpatchify_flux2(patches)
