"""LTX-Video: ``AutoencoderKLLTXVideo`` (128 channels, 32x spatial, 8x temporal), packed video tokens.

LTXPipeline after denoising: ``_unpack_latents`` of the (B, f*h*w, 128) tokens into (B, 128, f, h, w)
(f, h, w from ``num_frames``, ``height``, ``width``; the transformer's patch sizes are 1),
``_denormalize_latents`` (``latents * latents_std / scaling_factor + latents_mean``, the VAE's buffers);
with a timestep-conditioned decoder (0.9.1 on), noise mixed in,
``(1 - decode_noise_scale) * latents + decode_noise_scale * noise``, and
``vae.decode(latents, decode_timestep)``; ``postprocess_video``.

The noise is the next draw of the pipeline's generator; here it is ``torch.randn`` from a CPU generator
seeded with ``decode_noise_seed``: what the pipeline draws when it is handed the latents (``latents=``)
and a fresh generator of that seed.

Encode: an image as LTXImageToVideoPipeline's ``prepare_latents`` conditions on it (a one-frame video,
``_normalize_latents`` with its default scaling of 1, packed): (B, h*w, 128) tokens, one latent frame
(decode them with num_frames 1). The pipeline samples the posterior (``retrieve_latents`` with its
generator); here it is the MODE, the distribution's centre: deterministic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ...core.layouts import OutputGeometry
from ...errors import InvalidLatent, InvalidRequest
from .videobase import (
    VideoFamily,
    check_options,
    encode_mode,
    pipeline_noise,
    scaling_of,
    timestep_kwargs,
    to_video01,
    vae_call,
)

if TYPE_CHECKING:
    from ...core.request import DecodeRequest
    from ..loader import LoadedModel
    from ..modelspec import ModelSpec

__all__ = ["FAMILY", "LTXVideoFamily", "latent_grid"]


def latent_grid(spec: ModelSpec, request: DecodeRequest) -> tuple[int, int, int]:
    """(f, h, w) of the unpacked latent for a video of num_frames x height x width, as LTXPipeline computes it."""
    if request.num_frames is None or request.height is None or request.width is None:
        missing = next(n for n in ("num_frames", "height", "width") if getattr(request, n) is None)
        raise InvalidRequest(f"model {spec.name} takes packed video tokens: give num_frames, height and width "
                             f"(the pipeline's arguments)", field=missing)  # fmt: skip
    return ((request.num_frames - 1) // spec.temporal_factor + 1, request.height // spec.spatial_factor,
            request.width // spec.spatial_factor)  # fmt: skip


class LTXVideoFamily(VideoFamily):
    name = "ltxvideo"
    options = ("num_frames", "decode_timestep", "decode_noise_scale", "decode_noise_seed")

    def describe_shape(self, spec: ModelSpec) -> list[Any]:
        return ["B", "f*h*w", spec.latent_channels]

    def check(self, latent: torch.Tensor, spec: ModelSpec, request: DecodeRequest) -> OutputGeometry:
        check_options(spec, request, self.options)
        if latent.ndim != 3:
            raise InvalidLatent(f"latent has {latent.ndim} dimensions {tuple(latent.shape)}; model {spec.name} "
                                f"expects (B, f*h*w, {spec.latent_channels}) tokens", field="latent")  # fmt: skip
        f, h, w = latent_grid(spec, request)
        if min(h, w) < 1:
            raise InvalidRequest(f"height and width must be at least {spec.spatial_factor}", field="height")
        if latent.shape[1] != f * h * w or latent.shape[2] != spec.latent_channels:
            raise InvalidLatent(
                f"latent {tuple(latent.shape)} does not fit num_frames {request.num_frames}, height "
                f"{request.height}, width {request.width}: model {spec.name} expects (B, {f}*{h}*{w} = "
                f"{f * h * w}, {spec.latent_channels})",
                field="latent",
            )
        return OutputGeometry(w * spec.spatial_factor, h * spec.spatial_factor, (f - 1) * spec.temporal_factor + 1)

    def to_vae(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        f, h, w = latent_grid(model.spec, request)
        batch = latents.shape[0]
        # LTXPipeline._unpack_latents with patch sizes 1
        latents = latents.reshape(batch, f, h, w, -1, 1, 1, 1)
        latents = latents.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        module = model.module
        mean = module.latents_mean.view(1, -1, 1, 1, 1).to(latents.device, latents.dtype)
        std = module.latents_std.view(1, -1, 1, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std / scaling_of(model, request) + mean
        if not module.config.timestep_conditioning:
            return latents
        scale = request.decode_noise_scale if request.decode_noise_scale is not None else self._timestep(request)
        if scale:  # (1 - 0) * x + 0 * noise is x: no noise drawn
            noise = torch.cat([pipeline_noise((1, *latents.shape[1:]), request.decode_noise_seed)] * batch)
            scale_t = torch.tensor(scale, dtype=latents.dtype, device=latents.device)  # as the pipeline's tensor
            latents = (1 - scale_t) * latents + scale_t * noise.to(latents.device)
        return latents

    @staticmethod
    def _timestep(request: DecodeRequest) -> float:
        return request.decode_timestep if request.decode_timestep is not None else 0.0

    def vae_input_kwargs(self, model: LoadedModel, z: torch.Tensor, request: DecodeRequest) -> dict[str, Any]:
        return timestep_kwargs(model, z, request)

    def decode(self, model: LoadedModel, z: torch.Tensor, request: DecodeRequest, *, tile: bool) -> torch.Tensor:
        if not model.module.config.timestep_conditioning:
            return to_video01(vae_call(model, z, tile=tile))
        timestep = torch.full((z.shape[0],), self._timestep(request), dtype=torch.float32)
        return to_video01(vae_call(model, z, tile=tile, temb=timestep))

    def encode(self, model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        latents = encode_mode(model, images)
        module = model.module
        mean = module.latents_mean.view(1, -1, 1, 1, 1).to(latents.device, latents.dtype)
        std = module.latents_std.view(1, -1, 1, 1, 1).to(latents.device, latents.dtype)
        latents = (latents - mean) / std  # _normalize_latents(scaling_factor=1.0), as the I2V pipeline calls it
        return latents.flatten(2).transpose(1, 2).cpu()  # _pack_latents with patch sizes 1: (B, f*h*w, C)


FAMILY = LTXVideoFamily()
