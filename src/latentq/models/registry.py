"""The registry of model specs: latent layout, channels, factors, output range, weights source.

Built-in specs: the families latentq started with here; the newer image families in
``catalog.py``, the video and audio ones in ``catalog_video.py``. A TOML models file (path in
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
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import models_file_from_env
from ..errors import ConfigError, UnknownModel
from . import catalog, catalog_video
from .families import get_family
from .modelspec import FRAMEWISE, ModelSpec

__all__ = ["BUILTIN_MODELS", "ModelSpec", "Registry", "load_registry"]

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
            description="FLUX.1 VAE; packed (B, seq, 64) latents with height and width, or unpacked (B, 16, h, w)"),
        ModelSpec(name="flux2", loader="diffusers", diffusers_class="AutoencoderKLFlux2",
                  source="black-forest-labs/FLUX.2-dev", subfolder="vae", latent_channels=32, layout="flux2",
                  normalization="batch_norm", dtype="bfloat16", preview="taef2",
                  description="FLUX.2 VAE; packed (B, seq, 128) latents with height and width"),
        ModelSpec(name="hunyuanvideo", loader="diffusers", diffusers_class="AutoencoderKLHunyuanVideo",
                  source="hunyuanvideo-community/HunyuanVideo", subfolder="vae", latent_channels=16, layout="video",
                  scaling_factor=0.476986, temporal_factor=4, dtype="float16", tile_above_pixels=256 * 256,
                  description="HunyuanVideo VAE; (B, 16, f, h, w) latents; encodes an image as "
                              "HunyuanVideoImageToVideoPipeline conditions on it (mode, scaled), (B, 16, 1, h, w)"),
        ModelSpec(name="wan", loader="diffusers", diffusers_class="AutoencoderKLWan",
                  source="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", subfolder="vae", latent_channels=16, layout="video",
                  normalization="latents_mean_std", temporal_factor=4, dtype="float32",
                  tile_above_pixels=480 * 832, tile_above_frames=FRAMEWISE,
                  description="Wan 2.1 VAE; (B, 16, f, h, w) latents; encodes an image as WanImageToVideoPipeline "
                              "conditions on it (mode, normalised: its first latent frame), (B, 16, 1, h, w)"),
        _tiny("taesd", "madebyollin/taesd", latent_channels=4, description="Tiny AE for SD 1.x/2.x latents"),
        _tiny("taesdxl", "madebyollin/taesdxl", latent_channels=4, description="Tiny AE for SDXL latents"),
        _tiny("taesd3", "madebyollin/taesd3", latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609,
              description="Tiny AE for SD3 latents"),
        _tiny("taef1", "madebyollin/taef1", latent_channels=16, layout="packed", scaling_factor=0.3611,
              shift_factor=0.1159, description="Tiny AE for FLUX.1 latents (packed)"),
        ModelSpec(name="taef2", loader="taef2", latent_channels=32, output_range="0,1", source="madebyollin/taef2",
                  description="Tiny AE for FLUX.2 latents, (B, 32, h, w) VAE-space latents"),
        *catalog.SPECS,
        *catalog_video.SPECS,
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
        spec = ModelSpec(name=name, **values)
    except TypeError as exc:
        raise ConfigError(f"[models.{name}]: {exc}") from exc
    get_family(spec.family)  # an unknown family fails here, at load, not on the first job
    return spec


def load_registry(models_file: str | Path | None = None) -> Registry:
    """Built-in models, overridden by ``models_file`` or ``$LATENTQ_MODELS``."""
    registry = Registry()

    path = models_file or models_file_from_env()
    if path:
        registry.apply_file(path)
    return registry
