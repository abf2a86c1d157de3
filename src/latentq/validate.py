"""Checks of a latent and its request against the model spec, shared by producer, API and worker."""

from __future__ import annotations

import torch

from .errors import InvalidLatent, InvalidRequest, LatentTooLarge, UnsupportedFormat
from .layouts import OutputGeometry, describe_shape, geometry, packed_grid
from .models.registry import ModelSpec
from .spec import DecodeRequest, Limits
from .wire import check_tensor

__all__ = ["output_geometry", "validate_image", "validate_latent"]


def output_geometry(latent: torch.Tensor, spec: ModelSpec, request: DecodeRequest) -> OutputGeometry:
    return geometry(spec.layout, tuple(latent.shape), spec.spatial_factor, spec.temporal_factor,
                    request.height, request.width)  # fmt: skip


def _expected(spec: ModelSpec) -> str:
    return "(" + ", ".join(str(d) for d in describe_shape(spec.layout, spec.latent_channels)) + ")"


def validate_latent(latent: object, spec: ModelSpec, request: DecodeRequest, limits: Limits) -> torch.Tensor:
    """Return the latent with its batch dimension of 1, or raise an InvalidRequest naming the problem.

    A latent without the batch dimension gets one; a batch of several samples
    must be split into jobs first (``Client.submit_many``).
    """
    if request.output_format not in spec.output_formats:
        raise UnsupportedFormat(
            f"output_format {request.output_format!r} is not offered for {spec.name} "
            f"({spec.layout} latents); use one of {', '.join(spec.output_formats)}",
            field="output_format",
        )
    if request.preview and not spec.preview:
        raise InvalidRequest(f"model {spec.name} has no preview decoder", field="preview")
    tensor = check_tensor(latent, limits)
    if tensor.ndim == spec.latent_ndim - 1:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != spec.latent_ndim:
        raise InvalidLatent(
            f"latent has {tensor.ndim} dimensions {tuple(tensor.shape)}; model {spec.name} expects {_expected(spec)}",
            field="latent",
        )
    if tensor.shape[0] != 1:
        raise InvalidLatent(
            f"latent batch dimension is {tensor.shape[0]}; submit one sample per job (use submit_many)",
            field="latent",
        )
    if spec.layout in ("packed", "flux2"):
        _check_packed(tensor, spec, request)
    elif tensor.shape[1] != spec.latent_channels:
        raise InvalidLatent(
            f"latent has {tensor.shape[1]} channels; model {spec.name} expects {spec.latent_channels}",
            field="latent",
        )
    size = output_geometry(tensor, spec, request)
    if size.width * size.height > limits.max_output_pixels:
        raise LatentTooLarge(
            f"output would be {size.width}x{size.height} = {size.width * size.height} pixels, over the limit of "
            f"{limits.max_output_pixels}",
            field="latent",
        )
    if size.frames > limits.max_frames:
        raise LatentTooLarge(f"output would have {size.frames} frames, over the limit of {limits.max_frames}",
                             field="latent")  # fmt: skip
    return tensor


def _check_packed(tensor: torch.Tensor, spec: ModelSpec, request: DecodeRequest) -> None:
    if request.height is None or request.width is None:
        raise InvalidRequest(f"model {spec.name} takes packed latents: give the image height and width",
                             field="height")  # fmt: skip
    if tensor.shape[2] != spec.packed_channels:
        raise InvalidLatent(
            f"packed latent has {tensor.shape[2]} channels in its last dimension; model {spec.name} expects "
            f"{spec.packed_channels} (2x2 patches of {spec.latent_channels})",
            field="latent",
        )
    h, w = packed_grid(request.height, request.width, spec.spatial_factor)
    if tensor.shape[1] != (h // 2) * (w // 2):
        raise InvalidLatent(
            f"packed latent has {tensor.shape[1]} tokens; a {request.width}x{request.height} image needs "
            f"{(h // 2) * (w // 2)}",
            field="latent",
        )


def validate_image(image: object, spec: ModelSpec, limits: Limits) -> torch.Tensor:
    """An encode job's input: RGB (1, 3, H, W) float in [0, 1], H and W multiples of the spatial factor."""
    if not spec.has_encoder or spec.layout != "image":
        raise InvalidRequest(f"model {spec.name} has no encoder offered for encode jobs", field="model")
    tensor = check_tensor(image, limits, field="image")
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4 or tensor.shape[0] != 1 or tensor.shape[1] != 3:
        raise InvalidLatent(f"image must be (1, 3, H, W) RGB, got {tuple(tensor.shape)}", field="image")
    height, width = tensor.shape[2], tensor.shape[3]
    factor = spec.spatial_factor
    if height % factor or width % factor:
        raise InvalidLatent(f"image height and width must be multiples of {factor}, got {width}x{height}",
                            field="image")  # fmt: skip
    if height * width > limits.max_output_pixels:
        raise LatentTooLarge(f"image has {height * width} pixels, over the limit of {limits.max_output_pixels}",
                             field="image")  # fmt: skip
    return tensor
