"""The registry of model specs: latent layout, channels, factors, output range, weights source.

Built-in specs cover ``taef2`` and ``sd15``. A TOML models file (path in
``LATENTQ_MODELS``) overrides any field of a built-in model (its weights
``source`` most often) or declares a new model from a diffusers class::

    [models.taef2]
    source = "../shared/models/taef2"      # relative to the TOML file

    [models.tiny-kl]
    class = "AutoencoderKL"
    latent_channels = 4
    scaling_factor = 0.18215
    config = { latent_channels = 4, block_out_channels = [32, 64], ... }
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UnknownModel
from ..layouts import LAYOUTS, describe_shape, latent_ndim
from ..spec import ARRAY_FORMATS, IMAGE_FORMATS, VIDEO_FORMATS

__all__ = ["ModelSpec", "Registry", "BUILTIN_MODELS", "load_registry"]

OUTPUT_RANGES = ("0,1", "-1,1")
LOADERS = ("taef2", "diffusers")
# How pipeline latents are un-scaled before vae.decode:
#   scale_shift       latents / scaling_factor + shift_factor     (SD, SDXL, SD3, FLUX.1, HunyuanVideo, tiny AEs)
#   latents_mean_std  latents * std + mean, per channel, from the VAE config  (Wan)
#   batch_norm        the VAE's batch-norm running statistics, in `unpack`    (FLUX.2)
NORMALIZATIONS = ("scale_shift", "latents_mean_std", "batch_norm")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    loader: str  # "taef2" (our module) or "diffusers" (a diffusers class)
    latent_channels: int
    layout: str = "image"
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
    tile_above_frames: int = 64  # video: frames above which decode is tiled
    has_encoder: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        if self.loader not in LOADERS:
            raise ConfigError(f"model {self.name}: loader must be one of {LOADERS}, got {self.loader!r}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"model {self.name}: layout must be one of {LAYOUTS}, got {self.layout!r}")
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

    @property
    def latent_ndim(self) -> int:
        return latent_ndim(self.layout)

    @property
    def is_video(self) -> bool:
        return self.layout == "video"

    @property
    def packed_channels(self) -> int:
        """The last dimension of packed (FLUX) latents: 2x2 patches of the VAE's channels."""
        return self.latent_channels * 4

    @property
    def output_formats(self) -> list[str]:
        return list(VIDEO_FORMATS if self.is_video else IMAGE_FORMATS) + list(ARRAY_FORMATS)

    def describe(self) -> dict[str, Any]:
        """The public view served by ``GET /v1/models`` (no config internals)."""
        return {
            "name": self.name,
            "loader": self.loader,
            "class": self.diffusers_class or "TAEF2",
            "layout": self.layout,
            "latent_shape": describe_shape(self.layout, self.latent_channels),
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
            "has_encoder": self.has_encoder,
            "output_formats": self.output_formats,
            "description": self.description,
        }


def _kl(name: str, source: str, subfolder: str | None, **fields: Any) -> ModelSpec:
    return ModelSpec(name=name, loader="diffusers", diffusers_class="AutoencoderKL", source=source,
                     subfolder=subfolder, **fields)  # fmt: skip


def _tiny(name: str, source: str, **fields: Any) -> ModelSpec:
    # Tiny autoencoders: fast previews. taesd/taesdxl read the pipeline's scaled latents as is.
    return ModelSpec(name=name, loader="diffusers", diffusers_class="AutoencoderTiny", source=source, **fields)


BUILTIN_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _kl("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "vae", latent_channels=4, scaling_factor=0.18215,
            dtype="float16", preview="taesd", description="Stable Diffusion 1.x / 2.x VAE"),
        _kl("sdxl", "madebyollin/sdxl-vae-fp16-fix", None, latent_channels=4, scaling_factor=0.13025,
            dtype="float16", preview="taesdxl", description="SDXL VAE (fp16-safe fix)"),
        _kl("sd3", "stabilityai/stable-diffusion-3.5-large", "vae", latent_channels=16, scaling_factor=1.5305,
            shift_factor=0.0609, dtype="float16", preview="taesd3", description="SD3 / SD3.5 VAE"),
        _kl("flux1", "black-forest-labs/FLUX.1-schnell", "vae", latent_channels=16, layout="packed",
            scaling_factor=0.3611, shift_factor=0.1159, dtype="bfloat16", preview="taef1",
            description="FLUX.1 VAE; packed (B, seq, 64) latents with height and width"),
        ModelSpec(name="flux2", loader="diffusers", diffusers_class="AutoencoderKLFlux2",
                  source="black-forest-labs/FLUX.2-dev", subfolder="vae", latent_channels=32, layout="flux2",
                  normalization="batch_norm", dtype="bfloat16", preview="taef2",
                  description="FLUX.2 VAE; packed (B, seq, 128) latents with height and width"),
        ModelSpec(name="hunyuanvideo", loader="diffusers", diffusers_class="AutoencoderKLHunyuanVideo",
                  source="hunyuanvideo-community/HunyuanVideo", subfolder="vae", latent_channels=16, layout="video",
                  scaling_factor=0.476986, temporal_factor=4, dtype="float16", tile_above_pixels=256 * 256,
                  description="HunyuanVideo VAE; (B, 16, f, h, w) latents"),
        ModelSpec(name="wan", loader="diffusers", diffusers_class="AutoencoderKLWan",
                  source="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", subfolder="vae", latent_channels=16, layout="video",
                  normalization="latents_mean_std", temporal_factor=4, dtype="float32",
                  tile_above_pixels=480 * 832, description="Wan 2.1 VAE; (B, 16, f, h, w) latents"),
        _tiny("taesd", "madebyollin/taesd", latent_channels=4, description="Tiny AE for SD 1.x/2.x latents"),
        _tiny("taesdxl", "madebyollin/taesdxl", latent_channels=4, description="Tiny AE for SDXL latents"),
        _tiny("taesd3", "madebyollin/taesd3", latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609,
              description="Tiny AE for SD3 latents"),
        _tiny("taef1", "madebyollin/taef1", latent_channels=16, layout="packed", scaling_factor=0.3611,
              shift_factor=0.1159, description="Tiny AE for FLUX.1 latents (packed)"),
        ModelSpec(name="taef2", loader="taef2", latent_channels=32, output_range="0,1", source="madebyollin/taef2",
                  description="Tiny AE for FLUX.2 latents, (B, 32, h, w) VAE-space latents"),
    )
}  # fmt: skip

# TOML spellings -> ModelSpec fields.
_ALIASES = {"class": "diffusers_class"}
_FIELDS = {f.name for f in dataclasses.fields(ModelSpec)}


@dataclass
class Registry:
    """The models this deployment knows, by name."""

    models: dict[str, ModelSpec] = field(default_factory=lambda: dict(BUILTIN_MODELS))

    def get(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise UnknownModel(
                f"unknown model {name!r}; known models: {', '.join(sorted(self.models))}", field="model"
            ) from None

    def names(self) -> list[str]:
        return sorted(self.models)

    def __contains__(self, name: object) -> bool:
        return name in self.models

    def apply_file(self, path: str | Path) -> None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read models file {path}: {exc}") from exc
        tables = data.get("models", {})
        if not isinstance(tables, dict):
            raise ConfigError(f"{path}: [models] must be a table of tables")
        for name, table in tables.items():
            self.models[name] = _spec_from_table(name, table, self.models.get(name), base=path.parent)


def _spec_from_table(name: str, table: Any, base_spec: ModelSpec | None, *, base: Path) -> ModelSpec:
    if not isinstance(table, dict):
        raise ConfigError(f"[models.{name}] must be a table")
    values: dict[str, Any] = {}
    for key, value in table.items():
        key = _ALIASES.get(key, key)
        if key not in _FIELDS or key == "name":
            raise ConfigError(f"[models.{name}]: unknown key {key!r}")
        values[key] = value
    source = values.get("source")
    if isinstance(source, str) and source.startswith((".", "/", "~")):
        # Relative local paths are relative to the models file, not the cwd.
        values["source"] = str((base / Path(source).expanduser()).resolve())
    if isinstance(values.get("config"), str):
        config_path = (base / values["config"]).resolve()
        import json

        try:
            values["config"] = json.loads(config_path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"[models.{name}]: cannot read config {config_path}: {exc}") from exc
    if base_spec is not None:
        if "config" in values and "source" not in values:
            values["source"] = None
        return dataclasses.replace(base_spec, **values)
    values.setdefault("loader", "diffusers")
    if "latent_channels" not in values:
        config = values.get("config") or {}
        if "latent_channels" not in config:
            raise ConfigError(f"[models.{name}]: give latent_channels")
        values["latent_channels"] = int(config["latent_channels"])
    if "scaling_factor" not in values and values.get("config"):
        values["scaling_factor"] = float(values["config"].get("scaling_factor", 1.0))
    try:
        return ModelSpec(name=name, **values)
    except TypeError as exc:
        raise ConfigError(f"[models.{name}]: {exc}") from exc


def load_registry(models_file: str | Path | None = None) -> Registry:
    """Built-in models, overridden by ``models_file`` or ``$LATENTQ_MODELS``."""
    registry = Registry()
    path = models_file or os.environ.get("LATENTQ_MODELS")
    if path:
        registry.apply_file(path)
    return registry
