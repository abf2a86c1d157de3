"""Load a model spec's weights onto a device and decode / encode with it.

Only workers (and the demo's encoder) import this module: it pulls in
diffusers and the model code, which producers and the API never need.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from ..errors import ConfigError, ModelLoadError
from .registry import ModelSpec
from .taef2 import TAEF2

__all__ = ["LoadedModel", "load_model", "to_uint8"]

TAEF2_FILENAME = "taef2.safetensors"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] float (B, 3, H, W) -> uint8 (B, H, W, 3), rounded like VaeImageProcessor."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class LoadedModel:
    """A model held warm on one device; ``decode`` returns RGB in [0, 1]."""

    def __init__(self, spec: ModelSpec, module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.spec = spec
        self.module = module
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()  # one forward pass at a time per model

    def unscale(self, latents: torch.Tensor, scaling_factor: float | None, shift_factor: float | None) -> torch.Tensor:
        scaling = self.spec.scaling_factor if scaling_factor is None else scaling_factor
        shift = self.spec.shift_factor if shift_factor is None else shift_factor
        return latents / scaling + shift

    @torch.inference_mode()
    def decode(
        self, latents: torch.Tensor, scaling_factor: float | None = None, shift_factor: float | None = None
    ) -> torch.Tensor:
        """(B, C, h, w) scaled latents -> (B, 3, H, W) float32 in [0, 1] on the CPU."""
        z = self.unscale(latents.to(self.device, torch.float32), scaling_factor, shift_factor).to(self.dtype)
        with self._lock:
            if self.spec.loader == "taef2":
                out = self.module.decode(z)
            else:
                out = self.module.decode(z, return_dict=False)[0]
        out = out.float()
        if self.spec.output_range == "-1,1":
            out = out / 2 + 0.5
        return out.clamp(0, 1).cpu()

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> scaled latents (what a pipeline hands to decode)."""
        if not self.spec.has_encoder:
            raise ConfigError(f"model {self.spec.name} has no encoder")
        x = images.to(self.device, self.dtype)
        with self._lock:
            if self.spec.loader == "taef2":
                z = self.module.encode(x)
            else:
                x = x * 2 - 1
                z = self.module.encode(x).latent_dist.mode()
        z = z.float()
        return ((z - self.spec.shift_factor) * self.spec.scaling_factor).cpu()


def _resolve_taef2_file(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / TAEF2_FILENAME
    if path.is_file():
        return path
    if path.is_absolute() or source.startswith("."):
        raise ModelLoadError(f"taef2 weights not found at {path}")
    try:  # a hub repo id
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, TAEF2_FILENAME))
    except Exception as exc:
        raise ModelLoadError(
            f"cannot fetch {TAEF2_FILENAME} from hub repo {source!r}: {exc}. "
            "Offline? Point the model at a local copy with LATENTQ_MODELS (see README)."
        ) from exc


def _load_diffusers(spec: ModelSpec, dtype: torch.dtype) -> torch.nn.Module:
    import diffusers

    cls = getattr(diffusers, spec.diffusers_class or "", None)
    if cls is None:
        raise ConfigError(f"model {spec.name}: diffusers has no class {spec.diffusers_class!r}")
    if spec.source is None:
        torch.manual_seed(spec.seed)  # random weights, reproducible across processes
        return cls.from_config(spec.config).to(dtype)
    try:
        kwargs = {"subfolder": spec.subfolder} if spec.subfolder else {}
        return cls.from_pretrained(spec.source, torch_dtype=dtype, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"cannot load {spec.name} from {spec.source!r}: {exc}") from exc


def load_model(spec: ModelSpec, device: str | torch.device = "cpu", dtype: str | None = None) -> LoadedModel:
    torch_dtype = _DTYPES[dtype or spec.dtype]
    device = torch.device(device)
    if spec.loader == "taef2":
        if spec.source is None:
            torch.manual_seed(spec.seed)
            module: torch.nn.Module = TAEF2()
        else:
            try:
                module = TAEF2.from_file(_resolve_taef2_file(spec.source))
            except ModelLoadError:
                raise
            except Exception as exc:
                raise ModelLoadError(f"cannot load taef2 weights from {spec.source!r}: {exc}") from exc
    else:
        module = _load_diffusers(spec, torch_dtype)
    module = module.to(device=device, dtype=torch_dtype).eval().requires_grad_(False)
    return LoadedModel(spec, module, device, torch_dtype)
