"""Shared test helpers: real photographs, TAEF2 latents, PSNR, reference decodes."""

from __future__ import annotations

import functools
import io
import time

import numpy as np
import torch
from conftest import IMAGES_DIR, TAEF2_DIR
from PIL import Image

from latentq.demo import load_image, psnr
from latentq.models.loader import LoadedModel, load_model, to_uint8
from latentq.models.registry import load_registry

__all__ = ["decode_png", "photo_latent", "psnr", "reference_pixels", "taef2", "wait_until"]


@functools.lru_cache(maxsize=1)
def taef2() -> LoadedModel:
    registry = load_registry(None)
    import dataclasses

    return load_model(dataclasses.replace(registry.get("taef2"), source=str(TAEF2_DIR)))


def photo_latent(name: str = "chelsea.png") -> tuple[torch.Tensor, np.ndarray]:
    pixels = load_image(IMAGES_DIR / name)
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255
    return taef2().encode(x), pixels


def reference_pixels(model: LoadedModel, latent: torch.Tensor, **kwargs) -> np.ndarray:
    """What a single, in-process decode of this latent gives, as (H, W, 3) uint8."""
    return to_uint8(model.decode(latent if latent.ndim == 4 else latent[None], **kwargs))[0].numpy()


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


assert psnr
