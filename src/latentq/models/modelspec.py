"""``ModelSpec``: what latentq knows about one model (layout, channels, factors, weights source, family).

A leaf module (no torch, no registry) so that the registry and the catalogs of built-in
models (``catalog.py``, ``catalog_video.py``) can all import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.layouts import LAYOUTS
from ..errors import ConfigError
from .families import get_family

__all__ = ["FRAMEWISE", "LOADERS", "NORMALIZATIONS", "OUTPUT_RANGES", "ModelSpec"]

OUTPUT_RANGES = ("0,1", "-1,1")
# tile_above_frames of the VAEs that decode frame by frame (a causal cache: Wan, CogVideoX): their memory
# does not grow with the frames, and their tiling is spatial only, so frames alone never call for it.
FRAMEWISE = 1 << 20
LOADERS = ("taef2", "diffusers")
# How pipeline latents are un-scaled before vae.decode (the generic family; other families do their own):
#   scale_shift       latents / scaling_factor + shift_factor     (SD, SDXL, SD3, FLUX.1, HunyuanVideo, tiny AEs)
#   latents_mean_std  latents * std + mean, per channel, from the VAE config  (Wan)
#   batch_norm        the VAE's batch-norm running statistics, in `unpack`    (FLUX.2)
NORMALIZATIONS = ("scale_shift", "latents_mean_std", "batch_norm")


def _shapes(name: str, shapes: Any) -> tuple[tuple[int, ...], ...]:
    """``warmup_shapes`` (TOML lists) -> a tuple of 4-D or 5-D shapes of positive ints."""
    try:
        out = tuple(tuple(int(n) for n in shape) for shape in shapes)
    except (TypeError, ValueError):
        out = ()
        shapes = None
    if shapes is None or any(len(shape) not in (4, 5) or min(shape) < 1 for shape in out):
        raise ConfigError(f"model {name}: warmup_shapes must be a list of 4- or 5-number latent shapes, "
                          "e.g. [[1, 4, 64, 64], [8, 4, 64, 64]]")
    return out


@dataclass(frozen=True)
class ModelSpec:
    name: str
    loader: str  # "taef2" (our module) or "diffusers" (a diffusers class)
    latent_channels: int
    layout: str = "image"  # the generic family's layouts (latentq.core.layouts); a family may name its own
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    output_range: str = "-1,1"  # range the decoder's raw output lives in
    dtype: str = "float32"
    source: str | None = None  # hub repo id or local path
    subfolder: str | None = None
    diffusers_class: str | None = None
    config: dict[str, Any] | None = None  # random-init config when no source
    seed: int = 0
    spatial_factor: int = 8
    temporal_factor: int = 1  # video: decoded frames = (f - 1) * temporal_factor + 1
    normalization: str = "scale_shift"
    preview: str | None = None  # the tiny autoencoder that previews this model's latents
    tile_above_pixels: int = 1024 * 1024  # per-sample output pixels above which decode is tiled
    tile_above_frames: int = 64  # video: frames above which decode is tiled (FRAMEWISE: never for frames alone)
    has_encoder: bool = True
    description: str = ""
    family: str | None = None  # a module of latentq.models.families; None: the generic, spec-driven one
    pipelines: tuple[str, ...] = ()  # the diffusers pipelines whose latents this model decodes (docs, table)
    # VAE-space latent shapes ((B, C, h, w) or (B, C, f, h, w), as vae.decode receives them) a worker decodes
    # once at start: --compile compiles them (static shapes), cuDNN tunes for them
    warmup_shapes: tuple[tuple[int, ...], ...] = ()
    # The model that decodes the audio latents a job may carry beside the video ones (LTX-2: one MP4 with sound)
    audio_model: str | None = None

    def __post_init__(self) -> None:
        if self.loader not in LOADERS:
            raise ConfigError(f"model {self.name}: loader must be one of {LOADERS}, got {self.loader!r}")
        if self.family is None and self.layout not in LAYOUTS:
            raise ConfigError(f"model {self.name}: layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.family is not None and not (isinstance(self.family, str) and self.family.isidentifier()):
            raise ConfigError(f"model {self.name}: family must be a module name, got {self.family!r}")
        if self.output_range not in OUTPUT_RANGES:
            raise ConfigError(f"model {self.name}: output_range must be one of {OUTPUT_RANGES}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"model {self.name}: normalization must be one of {NORMALIZATIONS}")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"model {self.name}: dtype must be float32, float16 or bfloat16")
        if self.loader == "diffusers" and not self.diffusers_class:
            raise ConfigError(f"model {self.name}: a diffusers model needs `class`")
        if self.source is None and self.config is None:
            raise ConfigError(f"model {self.name}: needs a weights `source` or a `config`")
        if isinstance(self.pipelines, list):  # from TOML
            object.__setattr__(self, "pipelines", tuple(self.pipelines))
        object.__setattr__(self, "warmup_shapes", _shapes(self.name, self.warmup_shapes))

    @property
    def family_impl(self):  # -> Family (imported on first use: family modules may be heavier)
        return get_family(self.family)

    @property
    def latent_ndim(self) -> int:
        """The pipeline latent's dimensions, batch included (the first a family accepts)."""
        return self.family_impl.latent_ndims(self)[0]

    @property
    def output_kind(self) -> str:
        return self.family_impl.output_kind(self)

    @property
    def is_video(self) -> bool:
        return self.output_kind in ("video", "video+audio")

    @property
    def packed_channels(self) -> int:
        """The last dimension of packed (FLUX) latents: 2x2 patches of the VAE's channels."""
        return self.latent_channels * 4

    @property
    def output_formats(self) -> list[str]:
        return self.family_impl.output_formats(self)

    @property
    def offers_encoder(self) -> bool:
        """Whether encode jobs are served for this model (the class has an encoder and the family wires it)."""
        return self.family_impl.has_encoder(self)

    def describe(self) -> dict[str, Any]:
        """The public view served by ``GET /v1/models`` (no config internals)."""
        family = self.family_impl
        return {
            "name": self.name,
            "family": family.name,
            "loader": self.loader,
            "class": self.diffusers_class or "TAEF2",
            "layout": self.layout,
            "output_kind": family.output_kind(self),
            "latent_shape": family.describe_shape(self),
            "latent_shapes": family.describe_shapes(self),
            "latent_channels": self.latent_channels,
            "spatial_factor": self.spatial_factor,
            "temporal_factor": self.temporal_factor,
            "normalization": self.normalization,
            "preview": self.preview,
            "tile_above_pixels": self.tile_above_pixels,
            "tile_above_frames": self.tile_above_frames if self.is_video else None,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
            "output_range": self.output_range,
            "dtype": self.dtype,
            "source": self.source,
            "subfolder": self.subfolder,
            # The diffusers config of a model declared inline (None: its weights' config.json): RemoteVAE's config.
            "vae_config": self.config,
            "has_encoder": family.has_encoder(self),
            "output_formats": self.output_formats,
            "sample_rate": family.sample_rate,
            "options": list(getattr(family, "options", ())),  # the request options (num_frames, ...) it reads
            "pipelines": list(self.pipelines),
            "audio_model": self.audio_model,
            "description": self.description,
        }
