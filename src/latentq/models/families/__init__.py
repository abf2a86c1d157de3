"""Model families whose pipelines need code, not just registry fields, to turn latents into pixels or audio.

A built-in model that the generic ``ModelSpec`` fields describe (layout, normalization, scaling and shift)
uses the generic family (``generic.FAMILY``). A family whose pipeline does more (per-channel statistics
from the VAE config, a timestep-conditioned decode, 4-D image latents in front of a 5-D video VAE, a
temporal decoder, patchified or packed video tokens, audio) has a module
``latentq.models.families.<family>`` defining ``FAMILY``, an instance of a ``Family`` subclass;
``ModelSpec.family`` names it and ``get_family`` imports it on first use.

Who calls what:

- producers, the API and the worker validate with ``check`` (through ``latentq.models.validate``), and ask
  ``output_kind`` / ``output_formats`` / ``latent_ndims`` / ``has_encoder``: a family module is imported
  by every process, so it imports only torch at its top, diffusers inside its methods;
- the worker decodes a batch of same-shape latents with ``to_vae`` then ``decode``, previews with
  ``unpack`` (then the tiny autoencoder's own scaling), and encodes with ``encode``;
- ``LoadedModel`` (``model.module`` the diffusers VAE, ``model.lock`` held around its forward passes,
  ``model.decode_vae`` the plain ``vae.decode`` + range mapping) is what the worker passes in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ...core.request import ARRAY_FORMATS, IMAGE_FORMATS, VIDEO_FORMATS
from ...errors import ConfigError

if TYPE_CHECKING:  # torch and the loader only where a family is used
    import torch

    from ...core.layouts import OutputGeometry
    from ...core.request import DecodeRequest
    from ..loader import LoadedModel
    from ..modelspec import ModelSpec

__all__ = ["OUTPUT_KINDS", "Family", "get_family"]

# What a family's decode returns:
#   image        (B, 3, H, W) float32 in [0, 1]
#   video        (B, 3, F, H, W) float32 in [0, 1]
#   audio        (B, channels, samples) float32 in [-1, 1], at ``Family.sample_rate``
#   video+audio  a ``(video, audio)`` pair of the two above
OUTPUT_KINDS = ("image", "video", "audio", "video+audio")


class Family:
    """How a pipeline's latents are checked, made into the VAE's input, decoded and encoded."""
    name: str = "generic"
    sample_rate: int | None = None  # audio families

    # --- what the family accepts and produces (every process; no model needed) ---------------------
    def output_kind(self, spec: ModelSpec) -> str:
        return "video" if spec.layout == "video" else "image"

    def output_formats(self, spec: ModelSpec) -> list[str]:
        """The job output formats offered (``DecodeRequest.output_format`` values)."""
        kind = self.output_kind(spec)
        if kind in ("video", "video+audio"):
            return list(VIDEO_FORMATS) + list(ARRAY_FORMATS)
        if kind == "image":
            return list(IMAGE_FORMATS) + list(ARRAY_FORMATS)
        raise NotImplementedError(f"family {self.name}: output_formats for {kind!r} outputs")

    def describe_shape(self, spec: ModelSpec) -> list[Any]:
        """The pipeline latent's shape for ``GET /v1/models`` and error messages, e.g. ``["B", 16, "f", "h", "w"]``."""
        raise NotImplementedError

    def describe_shapes(self, spec: ModelSpec) -> list[list[Any]]:
        """Every latent shape accepted (the first is ``describe_shape``)."""
        return [self.describe_shape(spec)]

    def latent_ndims(self, spec: ModelSpec) -> tuple[int, ...]:
        """The dimensions (batch included) of the latents accepted; a latent with one fewer, and not
        itself accepted, gets a batch dimension of 1."""
        return tuple(len(shape) for shape in self.describe_shapes(spec))

    def has_encoder(self, spec: ModelSpec) -> bool:
        """Whether encode jobs are offered (``encode`` implemented and the class has an encoder)."""
        return False

    def check(self, latent: torch.Tensor, spec: ModelSpec, request: DecodeRequest) -> OutputGeometry:
        """Validate one latent (batch dimension 1 already added) against the spec and the request's
        height/width/frames; raise ``InvalidLatent`` / ``InvalidRequest`` naming the field; return the
        decoded size of the sample."""
        raise NotImplementedError

    # --- on a worker, with the model loaded ------------------------------------------------------------
    def unpack(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        """For previews: the pipeline latents in the VAE's layout, still scaled (a tiny autoencoder applies
        its own factors). Only families whose specs name a ``preview`` need it."""
        raise NotImplementedError(f"family {self.name} has no preview")

    def to_vae(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        """A batch of same-shape pipeline latents (float32, on the model's device) -> the VAE's input,
        unpacked and denormalised exactly as the pipeline does before ``vae.decode``."""
        raise NotImplementedError

    def vae_input_kwargs(self, model: LoadedModel, z: torch.Tensor, request: DecodeRequest) -> dict[str, Any]:
        """What ``vae.decode`` takes besides a ``vae_input`` job's latent (LTX's ``temb``: RemoteVAE)."""
        return {}

    def decode(self, model: LoadedModel, z: torch.Tensor, request: DecodeRequest, *, tile: bool) -> Any:
        """The VAE's input -> the output of ``output_kind`` (see ``OUTPUT_KINDS``), on the CPU."""
        raise NotImplementedError

    def encode(self, model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> the latents the pipeline would hand to decode (``remote_encode``)."""
        raise NotImplementedError(f"family {self.name} has no encoder")


_CACHE: dict[str | None, Family] = {}


def get_family(name: str | None) -> Family:
    """The family object for ``ModelSpec.family`` (``None``: the generic, spec-driven one)."""
    family = _CACHE.get(name)
    if family is not None:
        return family
    module_name = f"{__name__}.{name or 'generic'}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the family exists but something it imports does not

        raise ConfigError(f"no model family {name!r} (module {module_name})") from exc
    family = _CACHE[name] = module.FAMILY
    return family
