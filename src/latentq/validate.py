"""Checks of a latent against its model spec, shared by producer, API and worker."""

from __future__ import annotations

import torch

from .errors import InvalidLatent, LatentTooLarge
from .models.registry import ModelSpec
from .spec import DecodeRequest, Limits
from .wire import check_tensor

__all__ = ["validate_latent", "output_size"]


def output_size(latent: torch.Tensor, spec: ModelSpec) -> tuple[int, int]:
    """(width, height) of the decoded image."""
    return latent.shape[-1] * spec.spatial_factor, latent.shape[-2] * spec.spatial_factor


def validate_latent(latent: object, spec: ModelSpec, request: DecodeRequest, limits: Limits) -> torch.Tensor:
    """Return the latent as (1, C, h, w) or raise an InvalidRequest naming the problem.

    A (C, h, w) latent gets its batch dimension; a batch of several samples
    must be split into jobs first (``Client.submit_many``).
    """
    tensor = check_tensor(latent, limits)
    if tensor.ndim == spec.latent_ndim - 1:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != spec.latent_ndim:
        raise InvalidLatent(
            f"latent has {tensor.ndim} dimensions {tuple(tensor.shape)}; model {spec.name} expects "
            f"(B, C, h, w) with C={spec.latent_channels}",
            field="latent",
        )
    if tensor.shape[0] != 1:
        raise InvalidLatent(
            f"latent batch dimension is {tensor.shape[0]}; submit one sample per job (use submit_many)",
            field="latent",
        )
    if tensor.shape[1] != spec.latent_channels:
        raise InvalidLatent(
            f"latent has {tensor.shape[1]} channels; model {spec.name} expects {spec.latent_channels}",
            field="latent",
        )
    width, height = output_size(tensor, spec)
    if width * height > limits.max_output_pixels:
        raise LatentTooLarge(
            f"output would be {width}x{height} = {width * height} pixels, over the limit of "
            f"{limits.max_output_pixels}",
            field="latent",
        )
    return tensor
