"""What the video and audio families share: shape checks, the options a model takes, the VAE call.

Not a family itself (no ``FAMILY``): ``wan22``, ``ltxvideo``, ``cogvideox``, ... subclass ``VideoFamily``.
Imported by every process (through ``check``): torch only at the top.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ...core.layouts import OutputGeometry
from ...errors import InvalidLatent, InvalidRequest
from . import Family

if TYPE_CHECKING:
    from ...core.request import DecodeRequest
    from ..loader import LoadedModel
    from ..modelspec import ModelSpec

__all__ = ["FAMILY_OPTIONS", "VideoFamily", "check_options", "encode_mode", "pipeline_noise", "scaling_of",
           "timestep_kwargs", "to_video01", "vae_call"]

# DecodeRequest fields that only some families read; a model refuses those its family does not take.
FAMILY_OPTIONS = ("num_frames", "decode_timestep", "decode_noise_scale", "decode_noise_seed", "decode_chunk_size",
                  "audio_start_in_s", "audio_end_in_s")  # fmt: skip


def check_options(spec: ModelSpec, request: DecodeRequest, accepted: tuple[str, ...]) -> None:
    for name in FAMILY_OPTIONS:
        if name not in accepted and getattr(request, name, None) is not None:
            takes = f"it takes {', '.join(accepted)}" if accepted else "it takes none of the family options"
            raise InvalidRequest(f"model {spec.name} does not use {name} ({takes})", field=name)


def vae_call(model: LoadedModel, z: torch.Tensor, *, tile: bool, **kwargs: Any) -> torch.Tensor:
    """``vae.decode(z, **kwargs)`` in the model's dtype under its lock, tiling as asked; the raw output, float32."""
    module = model.module
    z = z.to(model.device, model.dtype)
    kwargs = {key: value.to(model.device, model.dtype) if isinstance(value, torch.Tensor) and value.is_floating_point()
              else value for key, value in kwargs.items()}  # fmt: skip
    with model.lock, torch.inference_mode():
        if hasattr(module, "use_tiling"):
            module.use_tiling = tile
        if hasattr(module, "use_slicing"):
            module.use_slicing = tile and z.shape[0] > 1
        out = module.decode(z, **kwargs, return_dict=False)[0]
    return out.float()


def encode_mode(model: LoadedModel, images: torch.Tensor, *, as_video: bool = True) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> the posterior's mode, float32 on the model's device: the image normalised to
    [-1, 1] as VideoProcessor.preprocess leaves it, a one-frame video (B, 3, 1, H, W) unless ``as_video`` is
    False (SVD's 2-D encoder). Untiled: the pipelines encode one image whole."""
    module = model.module
    x = (2.0 * images - 1.0).to(model.device, model.dtype)
    if as_video:
        x = x.unsqueeze(2)
    with model.lock, torch.inference_mode():
        if hasattr(module, "use_tiling"):
            module.use_tiling = False
        return module.encode(x, return_dict=False)[0].mode().float()


def pipeline_noise(shape: tuple[int, ...], seed: int | None) -> torch.Tensor:
    """One job's decode noise, as the pipeline's ``randn_tensor`` draws it from a fresh CPU generator
    seeded with ``seed`` (the pipeline's own generator, when it was given the latents)."""
    generator = torch.Generator("cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def to_video01(raw: torch.Tensor) -> torch.Tensor:
    """The VAE's [-1, 1] output -> [0, 1] on the CPU, as VideoProcessor.postprocess_video denormalizes it."""
    return (raw / 2 + 0.5).clamp(0, 1).cpu()


class VideoFamily(Family):
    """(B, C, f, h, w) latents (``frames_first``: (B, f, C, h, w)) decoded to (B, 3, F, H, W) in [0, 1]."""

    name = "video"
    frames_first = False
    options: tuple[str, ...] = ()  # the FAMILY_OPTIONS this family reads

    def output_kind(self, spec: ModelSpec) -> str:
        return "video"

    def describe_shape(self, spec: ModelSpec) -> list[Any]:
        if self.frames_first:
            return ["B", "f", spec.latent_channels, "h", "w"]
        return ["B", spec.latent_channels, "f", "h", "w"]

    def decoded_frames(self, spec: ModelSpec, latent_frames: int, request: DecodeRequest) -> int:
        return (latent_frames - 1) * spec.temporal_factor + 1

    def check(self, latent: torch.Tensor, spec: ModelSpec, request: DecodeRequest) -> OutputGeometry:
        check_options(spec, request, self.options)
        expected = "(" + ", ".join(str(d) for d in self.describe_shape(spec)) + ")"
        if latent.ndim != 5:
            raise InvalidLatent(f"latent has {latent.ndim} dimensions {tuple(latent.shape)}; model {spec.name} "
                                f"expects {expected}", field="latent")  # fmt: skip
        channels = latent.shape[2] if self.frames_first else latent.shape[1]
        if channels != spec.latent_channels:
            raise InvalidLatent(f"latent {tuple(latent.shape)} has {channels} channels; model {spec.name} expects "
                                f"{expected}", field="latent")  # fmt: skip
        frames = latent.shape[1] if self.frames_first else latent.shape[2]
        return OutputGeometry(latent.shape[-1] * spec.spatial_factor, latent.shape[-2] * spec.spatial_factor,
                              self.decoded_frames(spec, frames, request))  # fmt: skip

    def has_encoder(self, spec: ModelSpec) -> bool:
        # a family that overrides ``encode`` offers it where the spec says the class has one
        return spec.has_encoder and type(self).encode is not Family.encode

    def decode(self, model: LoadedModel, z: torch.Tensor, request: DecodeRequest, *, tile: bool) -> torch.Tensor:
        return to_video01(vae_call(model, z, tile=tile))


def timestep_kwargs(model: LoadedModel, z: torch.Tensor, request: DecodeRequest) -> dict[str, Any]:
    """LTX's ``temb`` for a ``vae_input`` decode: the request's decode_timestep, one per sample, where the
    VAE is timestep-conditioned and one was given (RemoteVAE sends the pipeline's)."""
    if not model.module.config.timestep_conditioning or request.decode_timestep is None:
        return {}
    return {"temb": torch.full((z.shape[0],), request.decode_timestep, dtype=torch.float32)}


def scaling_of(model: LoadedModel, request: DecodeRequest) -> float:
    """The request's ``scaling_factor`` where given, else the VAE config's (what the pipeline reads)."""
    if request.scaling_factor is not None:
        return request.scaling_factor
    return float(model.module.config.scaling_factor)
