"""The generic family: models that ``ModelSpec``'s fields describe (SD 1.x/XL/3, FLUX.1, FLUX.2, HunyuanVideo,
Wan 2.1 and the tiny autoencoders).

Layouts (``latentq.core.layouts``): ``image`` (B, C, h, w); ``packed`` FLUX.1 tokens (B, (H/16)*(W/16), 4C) with
the image height and width, or the same latents unpacked, (B, C, h, w), as Hugging Face's FLUX endpoint
also takes them; ``flux2`` (B, (H/16)*(W/16), 4C) with height and width; ``video`` (B, C, f, h, w).
Normalisation: ``spec.normalization`` (scale and shift, Wan's per-channel mean/std, FLUX.2's batch norm).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ...core.layouts import OutputGeometry, describe_shape, geometry, packed_grid, unpack
from ...errors import InvalidLatent, InvalidRequest
from . import Family
from .videobase import check_options, encode_mode

if TYPE_CHECKING:
    from ...core.request import DecodeRequest
    from ..loader import LoadedModel
    from ..modelspec import ModelSpec

__all__ = ["FAMILY", "GenericFamily", "encode_scaled"]

PACKED = ("packed", "flux2")


class GenericFamily(Family):
    name = "generic"

    def describe_shape(self, spec: ModelSpec) -> list[Any]:
        return describe_shape(spec.layout, spec.latent_channels)

    def describe_shapes(self, spec: ModelSpec) -> list[list[Any]]:
        shapes = [self.describe_shape(spec)]
        if spec.layout == "packed":  # FLUX.1 latents unpacked (what remote_encode returns)
            shapes.append(describe_shape("image", spec.latent_channels))
        return shapes

    def has_encoder(self, spec: ModelSpec) -> bool:
        # Video VAEs encode an image as their image-to-video pipelines do (a one-frame video); FLUX.2's
        # latents would need its batch norm inverted: not offered.
        return spec.has_encoder and spec.layout in ("image", "packed", "video")

    def check(self, latent: torch.Tensor, spec: ModelSpec, request: DecodeRequest) -> OutputGeometry:
        check_options(spec, request, ())  # the video and audio families' options mean nothing here: refuse them
        if spec.layout in PACKED and latent.ndim == 3:
            return _check_packed(latent, spec, request)
        if latent.shape[1] != spec.latent_channels:
            raise InvalidLatent(
                f"latent has {latent.shape[1]} channels; model {spec.name} expects {spec.latent_channels}",
                field="latent",
            )
        layout = "image" if spec.layout == "packed" else spec.layout  # unpacked FLUX.1 latents
        return geometry(layout, tuple(latent.shape), spec.spatial_factor, spec.temporal_factor)

    def unpack(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        spec = model.spec
        if spec.layout == "packed" and latents.ndim == 4:
            return latents  # already unpacked
        bn_mean = bn_std = None
        if spec.normalization == "batch_norm":
            bn = model.module.bn
            bn_mean = bn.running_mean
            bn_std = torch.sqrt(bn.running_var + model.module.config.batch_norm_eps)
        return unpack(spec.layout, latents, spatial_factor=spec.spatial_factor, height=request.height,
                      width=request.width, bn_mean=bn_mean, bn_std=bn_std)  # fmt: skip

    def to_vae(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        z = self.unpack(model, latents, request)
        return unscale(model, z, request.scaling_factor, request.shift_factor)

    def decode(self, model: LoadedModel, z: torch.Tensor, request: DecodeRequest, *, tile: bool) -> torch.Tensor:
        return model.decode_vae(z, tile=tile)

    @torch.inference_mode()
    def encode(self, model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        """Scaled latents in the VAE's layout: for FLUX.1, the unpacked (B, 16, h, w) the HF endpoint returns;
        for the video VAEs, (B, C, 1, h, w) as their image-to-video pipelines condition on an image."""
        spec = model.spec
        if spec.layout == "video":
            return _encode_video_image(model, images)
        x = images.to(model.device, model.dtype)
        with model.lock:
            if spec.loader == "taef2":
                z = model.module.encode(x)
            elif spec.diffusers_class == "AutoencoderTiny":
                z = model.module.encode(x * 2 - 1, return_dict=False)[0]
            else:
                z = model.module.encode(x * 2 - 1).latent_dist.mode()
        z = z.float()
        if spec.normalization != "scale_shift":
            return z.cpu()
        return ((z - spec.shift_factor) * spec.scaling_factor).cpu()


def _encode_video_image(model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
    """One image as a one-frame video, the posterior's mode (``retrieve_latents(..., "argmax")``), normalised:
    HunyuanVideoImageToVideoPipeline scales it (``* scaling_factor``); WanImageToVideoPipeline normalises
    with the config's mean and std, and as Wan's VAE is causal, the image alone encodes to the first latent
    frame of the (image + zero frames) video that Wan 2.1's pipeline encodes."""
    spec = model.spec
    z = encode_mode(model, images)
    if spec.normalization == "latents_mean_std":
        config = model.module.config
        mean = model.device_constant(("latents_mean",), z, lambda: torch.tensor(config.latents_mean, dtype=z.dtype))
        std = model.device_constant(("latents_std",), z, lambda: torch.tensor(config.latents_std, dtype=z.dtype))
        return ((z - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)).cpu()
    return ((z - spec.shift_factor) * spec.scaling_factor).cpu()


@torch.inference_mode()
def encode_scaled(model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
    """A deterministic encoder's output (``encode(...)[0]``, no distribution) times the scaling factor:
    the VAEs whose ``encode`` returns the latent itself (DC-AE, VQ)."""
    x = images.to(model.device, model.dtype) * 2 - 1
    with model.lock:
        z = model.module.encode(x, return_dict=False)[0].float()
    return (z * model.spec.scaling_factor).cpu()


def unscale(model: LoadedModel, latents: torch.Tensor, scaling_factor: float | None = None,
            shift_factor: float | None = None) -> torch.Tensor:  # fmt: skip
    """The spec's normalisation undone; a request's scaling / shift factors replace the spec's own."""
    spec = model.spec
    if spec.normalization == "latents_mean_std":
        config = model.module.config
        shape = (1, -1) + (1,) * (latents.ndim - 2)
        mean = model.device_constant(("latents_mean",), latents,
                                     lambda: torch.tensor(config.latents_mean, dtype=latents.dtype))  # fmt: skip
        std = model.device_constant(("latents_std",), latents,
                                    lambda: torch.tensor(config.latents_std, dtype=latents.dtype))  # fmt: skip
        return latents * std.view(shape) + mean.view(shape)  # Wan: latents / (1 / std) + mean
    if spec.normalization == "batch_norm":
        return latents  # already denormalised in unpack
    scaling = spec.scaling_factor if scaling_factor is None else scaling_factor
    shift = spec.shift_factor if shift_factor is None else shift_factor
    return latents / scaling + shift


def _check_packed(tensor: torch.Tensor, spec: ModelSpec, request: DecodeRequest) -> OutputGeometry:
    if request.height is None or request.width is None:
        unpacked = " (or send the latent unpacked, (B, C, h, w))" if spec.layout == "packed" else ""
        raise InvalidRequest(f"model {spec.name} takes packed latents: give the image height and width{unpacked}",
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
    return geometry(spec.layout, tuple(tensor.shape), spec.spatial_factor, spec.temporal_factor,
                    request.height, request.width)  # fmt: skip


FAMILY = GenericFamily()
