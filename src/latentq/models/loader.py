"""Load a model spec's weights onto a device and decode / encode with it.

Only workers (and the demo's encoder) import this module: it pulls in
diffusers and the model code, which producers and the API never need.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..core.request import DecodeRequest
from ..errors import ConfigError, ModelLoadError
from .device_path import DevicePath
from .families import get_family
from .families.generic import unscale
from .modelspec import ModelSpec
from .taef2 import TAEF2

__all__ = ["LoadedModel", "load_model", "to_uint8"]

TAEF2_FILENAME = "taef2.safetensors"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CHANNELS_LAST_DEVICES = ("cuda", "cpu")  # where --channels-last auto turns it on (measured faster on both)
COMPILE_LIMIT = 8  # --compile without warmup_shapes: the first shapes seen compiled (with them: those only)
log = logging.getLogger(__name__)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] float (B, 3, H, W) or (B, 3, F, H, W) -> uint8 channels-last, rounded like VaeImageProcessor."""
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.movedim(1, -1).contiguous()


class LoadedModel:
    """A model held warm on one device. ``decode`` takes pipeline latents and returns its family's output
    (RGB in [0, 1] for images and videos); the family (``spec.family``) does the unpacking and normalising."""

    def __init__(self, spec: ModelSpec, module: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                 *, channels_last: bool = False, compiled: Any = None) -> None:  # fmt: skip
        self.spec = spec
        self.module = module
        self.device = device
        self.dtype = dtype
        self.family = get_family(spec.family)
        self.lock = threading.Lock()  # one forward pass at a time per model
        self.path = DevicePath(device)  # pinned copies and a stream per stage on CUDA; plain tensors elsewhere
        self.channels_last = channels_last  # module in channels_last; 4-D inputs follow it
        self.compiled = compiled  # the CompiledDecoder under --compile (its shapes and eager_calls), else None
        self._constants: dict[tuple, torch.Tensor] = {}

    def device_constant(self, key: tuple, like: torch.Tensor, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``build()`` (a small CPU tensor, e.g. a config's per-channel mean) on ``like``'s device and dtype,
        made once per (key, device, dtype): built per decode it was a pageable host copy that stalled the
        compute stream every time."""
        full_key = (key, like.device, like.dtype)
        tensor = self._constants.get(full_key)
        if tensor is None:
            tensor = self._constants.setdefault(full_key, build().to(like.device, like.dtype))
        return tensor

    def _request(self, scaling_factor: float | None = None, shift_factor: float | None = None,
                 height: int | None = None, width: int | None = None) -> DecodeRequest:  # fmt: skip
        return DecodeRequest(model=self.spec.name, scaling_factor=scaling_factor, shift_factor=shift_factor,
                             height=height, width=width)  # fmt: skip

    def should_tile(self, width: int, height: int, frames: int = 1) -> bool:
        if not hasattr(self.module, "use_tiling"):
            return False
        return width * height > self.spec.tile_above_pixels or (
            self.spec.is_video and frames > self.spec.tile_above_frames
        )

    # --- decode -----------------------------------------------------------------------
    @torch.inference_mode()
    def decode_vae(self, z: torch.Tensor, *, tile: bool = False, **kwargs: Any) -> torch.Tensor:
        """VAE-space latents -> ``vae.decode`` (``kwargs`` passed on) -> float32 in [0, 1] on the model's
        device, (B, 3, H, W) or (B, 3, F, H, W)."""
        return self.to_unit(self.vae_decode(z, tile=tile, **kwargs))

    @torch.inference_mode()
    def vae_decode(self, z: torch.Tensor, *, tile: bool = False, **kwargs: Any) -> torch.Tensor:
        """The raw ``vae.decode(z, **kwargs)`` output, float32 on the model's device (under the model's lock,
        on the device path's compute stream)."""
        z = z.to(self.device, self.dtype)
        if self.channels_last and z.ndim == 4:
            z = z.contiguous(memory_format=torch.channels_last)
        with self.lock, self.path.computing():
            if self.spec.loader == "taef2":
                out = self.module.decode(z)
            else:
                if hasattr(self.module, "use_tiling"):
                    self.module.use_tiling = tile
                if hasattr(self.module, "use_slicing"):
                    self.module.use_slicing = tile and z.shape[0] > 1
                out = self.module.decode(z, return_dict=False, **kwargs)[0]
        return out.float()

    def to_unit(self, out: torch.Tensor) -> torch.Tensor:
        """The decoder's raw output (``spec.output_range``) -> [0, 1] where it is (the model's device), as
        VaeImageProcessor denormalizes."""
        with self.path.computing():
            if self.spec.output_range == "-1,1":
                out = out / 2 + 0.5
            return out.clamp(0, 1)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, scaling_factor: float | None = None, shift_factor: float | None = None,
               *, height: int | None = None, width: int | None = None, tile: bool = False,
               request: DecodeRequest | None = None, on_device: bool = False) -> Any:  # fmt: skip
        """Pipeline latents (a batch of one shape) -> the family's output (RGB float32 in [0, 1] for images
        and videos), on the CPU, or with ``on_device`` where the family left it (the worker's path: uint8
        there, then only what is needed copied back). ``request`` carries the options; without it, the
        arguments make one."""
        if request is None:
            request = self._request(scaling_factor, shift_factor, height, width)
        with self.path.computing():  # the host copies below must follow the compute stream's work
            z = self.path.to_device(latents, torch.float32)
            if request.vae_input:
                # RemoteVAE: the latent is what the pipeline hands vae.decode, and the pipeline finishes the
                # decode itself (picks frames, resizes, clamps): vae.decode's raw output, in [0, 1] terms but unclamped.
                out = self.vae_decode(z, tile=tile, **self.family.vae_input_kwargs(self, z, request))
                out = out / 2 + 0.5 if self.spec.output_range == "-1,1" else out
            else:
                out = self.family.decode(self, self.family.to_vae(self, z, request), request, tile=tile)
            if on_device or not isinstance(out, torch.Tensor):
                return out
            return out.cpu()

    @torch.inference_mode()
    def warmup(self, shapes: tuple[tuple[int, ...], ...] | None = None) -> None:
        """Decode zeros of each VAE-space latent shape (``spec.warmup_shapes``): compiles them (--compile)
        and lets cuDNN pick its kernels before the first job."""
        for shape in self.spec.warmup_shapes if shapes is None else shapes:
            started = time.perf_counter()
            with self.path.computing():
                self.vae_decode(torch.zeros(shape, device=self.device), tile=False)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            log.info("%s: warmed up for %s in %.1f s", self.spec.name, list(shape), time.perf_counter() - started)

    @torch.inference_mode()
    def preview(self, full: LoadedModel, latents: torch.Tensor, *, height: int | None = None,
                width: int | None = None, request: DecodeRequest | None = None) -> torch.Tensor:  # fmt: skip
        """Decode ``full``'s pipeline latents with this (tiny) model: full's unpacking, our own scaling."""
        request = request or self._request(height=height, width=width)
        with self.path.computing():
            z = full.family.unpack(full, self.path.to_device(latents, torch.float32).to(full.device), request)
            return self.decode_vae(unscale(self, z.to(self.device)), tile=False)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> the latents the family hands back (``remote_encode``'s)."""
        if not self.family.has_encoder(self.spec):
            raise ConfigError(f"model {self.spec.name} has no encoder")
        return self.family.encode(self, images)


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


def load_model(spec: ModelSpec, device: str | torch.device = "cpu", dtype: str | None = None, *,
               channels_last: bool | None = None, compile: bool = False) -> LoadedModel:  # fmt: skip
    """Load ``spec`` on ``device``. Without ``dtype``: the spec's dtype on GPUs, float32 on the CPU
    (half precision is slow there and the fidelity tests compare in fp32).

    ``channels_last``: the module's 2-D convolutions in channels_last (None: on CUDA, where cuDNN's NHWC
    kernels are faster, and on the CPU, where oneDNN's are: 1.11-1.16x for TAEF2, AutoencoderTiny and the
    SD 1.5 / FLUX.1 VAEs at 256 px, bench/channels_last_cpu.py; never for a model with 3-D convolutions). ``compile``: ``torch.compile`` the
    decoder, warmed up now for the spec's ``warmup_shapes``. On CUDA, cuDNN autotunes its kernels."""
    device = torch.device(device)
    torch_dtype = _DTYPES[dtype or (spec.dtype if device.type != "cpu" else "float32")]
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
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # latent shapes repeat: autotuning pays for itself
    flat = all(p.ndim != 5 for p in module.parameters())  # channels_last is for 2-D convolutions only
    use_channels_last = flat and (device.type in CHANNELS_LAST_DEVICES if channels_last is None else channels_last)
    if use_channels_last:
        module = module.to(memory_format=torch.channels_last)
    compiled = None
    if compile:
        from .compiled import compile_decoder  # only under --compile: it imports torch._dynamo (seconds)

        # Declared warm-up shapes are compiled at start and are the only ones: nothing compiles on the decode
        # thread later. Without any, the first COMPILE_LIMIT shapes compile on first use.
        compiled = compile_decoder(module, len(spec.warmup_shapes) or COMPILE_LIMIT)
    model = LoadedModel(spec, module, device, torch_dtype, channels_last=use_channels_last, compiled=compiled)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the weights' copies (default stream) are done before any compute stream
    if compile:
        model.warmup()
    return model
