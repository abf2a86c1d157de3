"""Checks of a latent and its request against the model spec, shared by producer, API and worker."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..core.layouts import OutputGeometry
from ..core.request import DecodeRequest, Limits
from ..core.wire import check_tensor
from ..errors import InvalidLatent, InvalidRequest, LatentTooLarge, UnsupportedFormat
from .modelspec import ModelSpec
from .registry import load_registry

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["audio_spec_of", "output_geometry", "validate_audio_latents", "validate_image", "validate_latent"]


def output_geometry(latent: torch.Tensor, spec: ModelSpec, request: DecodeRequest) -> OutputGeometry:
    """The decoded size of one sample (``latent`` has its batch dimension); checks it as its family does."""
    if request.vae_input:
        return _vae_input_geometry(latent, spec)
    return spec.family_impl.check(latent, spec, request)


def _vae_input_geometry(latent: torch.Tensor, spec: ModelSpec) -> OutputGeometry:
    """A latent as the pipeline hands it to ``vae.decode``, (1, C, h, w) or (1, C, f, h, w): its decoded size."""
    if spec.output_kind not in ("image", "video"):
        raise UnsupportedFormat(f"vae_input is offered for image and video models; {spec.name} decodes "
                                f"{spec.output_kind}", field="vae_input")  # fmt: skip
    if latent.shape[1] != spec.latent_channels:
        raise InvalidLatent(f"latent has {latent.shape[1]} channels; the VAE of {spec.name} takes "
                            f"{spec.latent_channels}", field="latent")  # fmt: skip
    frames = 1 if latent.ndim == 4 else (latent.shape[2] - 1) * spec.temporal_factor + 1
    return OutputGeometry(latent.shape[-1] * spec.spatial_factor, latent.shape[-2] * spec.spatial_factor, frames)


def _expected(spec: ModelSpec) -> str:
    shapes = ["(" + ", ".join(str(d) for d in shape) + ")" for shape in spec.family_impl.describe_shapes(spec)]
    return " or ".join(shapes)


def _unbatched(tensor: torch.Tensor, spec: ModelSpec, request: DecodeRequest) -> bool:
    """A latent whose dimensions fit two accepted shapes: FLUX.1's (16, h, w) sample (one of a batch that
    ``submit_many`` split) is also 3-D like packed tokens; with no image size given, C leading means unpacked."""
    return (not request.vae_input and spec.layout == "packed" and request.height is None
            and tensor.shape[0] == spec.latent_channels and tensor.shape[-1] != spec.packed_channels)  # fmt: skip


def validate_latent(latent: object, spec: ModelSpec, request: DecodeRequest, limits: Limits) -> torch.Tensor:
    """Return the latent with its batch dimension of 1, or raise an InvalidRequest naming the problem.

    A latent without the batch dimension gets one; a batch of several samples
    must be split into jobs first (``Client.submit_many``). The model's family checks the rest.
    """
    if request.output_format not in spec.output_formats:
        raise UnsupportedFormat(
            f"output_format {request.output_format!r} is not offered for {spec.name} "
            f"({spec.layout} latents); use one of {', '.join(spec.output_formats)}",
            field="output_format",
        )
    if request.preview and not spec.preview:
        raise InvalidRequest(f"model {spec.name} has no preview decoder", field="preview")
    if request.vae_input and request.output_format != "tensor":
        raise UnsupportedFormat("a vae_input job answers what vae.decode returns: output_format 'tensor'",
                                field="output_format")  # fmt: skip
    if request.preview and request.vae_input:
        raise InvalidRequest("preview takes the pipeline's latents, not vae_input ones", field="preview")
    tensor = check_tensor(latent, limits)
    ndims = (4, 5) if request.vae_input else spec.family_impl.latent_ndims(spec)
    if tensor.ndim + 1 in ndims and (tensor.ndim not in ndims or _unbatched(tensor, spec, request)):
        tensor = tensor.unsqueeze(0)
    if tensor.ndim not in ndims:
        raise InvalidLatent(
            f"latent has {tensor.ndim} dimensions {tuple(tensor.shape)}; model {spec.name} expects "
            + (f"(B, {spec.latent_channels}, [f,] h, w) with vae_input" if request.vae_input else _expected(spec)),
            field="latent",
        )
    if tensor.shape[0] != 1:
        raise InvalidLatent(
            f"latent batch dimension is {tensor.shape[0]}; submit one sample per job (use submit_many)",
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


def audio_spec_of(spec: ModelSpec, registry: Registry | None = None) -> ModelSpec:
    """The model that decodes ``spec``'s audio latents (``ModelSpec.audio_model``), or InvalidRequest."""
    if not spec.audio_model:
        raise InvalidRequest(f"model {spec.name} takes no audio_latents (it decodes {spec.output_kind} alone)",
                             field="audio_latents")  # fmt: skip
    if registry is None:

        registry = load_registry()
    return registry.get(spec.audio_model)


def validate_audio_latents(audio: object, spec: ModelSpec, request: DecodeRequest, limits: Limits,
                           registry: Registry | None = None) -> torch.Tensor:  # fmt: skip
    """The audio latents a video job carries (LTX-2: one MP4 with sound), with their batch dimension of 1,
    checked as ``spec.audio_model`` checks its own latents; errors name ``audio_latents``."""
    audio_spec = audio_spec_of(spec, registry)
    if request.output_format != "mp4":
        raise UnsupportedFormat(f"a job with audio_latents makes one MP4 with its sound: output_format 'mp4', "
                                f"not {request.output_format!r}", field="output_format")  # fmt: skip
    if request.vae_input or request.preview:
        raise InvalidRequest("audio_latents go with the pipeline's latents, without vae_input or preview",
                             field="audio_latents")  # fmt: skip
    tensor = check_tensor(audio, limits, field="audio_latents")
    ndims = audio_spec.family_impl.latent_ndims(audio_spec)
    if tensor.ndim + 1 in ndims:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim in ndims and tensor.shape[0] != 1:
        raise InvalidLatent(f"audio_latents batch dimension is {tensor.shape[0]}; submit one sample per job",
                            field="audio_latents")  # fmt: skip
    try:
        audio_spec.family_impl.check(tensor, audio_spec, DecodeRequest(model=audio_spec.name, output_format="wav"))
    except InvalidLatent as exc:
        raise InvalidLatent(f"audio_latents: {exc} (model {audio_spec.name})", field="audio_latents") from None
    return tensor


def validate_image(image: object, spec: ModelSpec, limits: Limits, *, vae_input: bool = False) -> torch.Tensor:
    """An encode job's input: RGB (1, 3, H, W) float in [0, 1], H and W multiples of the spatial factor.
    With ``vae_input``: what a pipeline hands ``vae.encode`` ([-1, 1]; (1, 3, F, H, W) too, for video VAEs)."""
    if not spec.offers_encoder:
        raise InvalidRequest(f"model {spec.name} has no encoder offered for encode jobs", field="model")
    tensor = check_tensor(image, limits, field="image")
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    ndims = (4, 5) if vae_input else (4,)
    if tensor.ndim not in ndims or tensor.shape[0] != 1 or tensor.shape[1] != 3:
        wanted = "(1, 3, [F,] H, W)" if vae_input else "(1, 3, H, W)"
        raise InvalidLatent(f"image must be {wanted} RGB, got {tuple(tensor.shape)}", field="image")
    if tensor.ndim == 5 and tensor.shape[2] > limits.max_frames:
        raise LatentTooLarge(f"image has {tensor.shape[2]} frames, over the limit of {limits.max_frames}",
                             field="image")  # fmt: skip
    height, width = tensor.shape[-2], tensor.shape[-1]  # (1, 3, [F,] H, W): a video's frames come first
    factor = spec.spatial_factor
    if height % factor or width % factor:
        raise InvalidLatent(f"image height and width must be multiples of {factor}, got {width}x{height}",
                            field="image")  # fmt: skip
    if height * width > limits.max_output_pixels:
        raise LatentTooLarge(f"image has {height * width} pixels, over the limit of {limits.max_output_pixels}",
                             field="image")  # fmt: skip
    return tensor
