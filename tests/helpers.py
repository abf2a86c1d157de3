"""Shared test helpers: real photographs, TAEF2 latents, PSNR, reference decodes."""

from __future__ import annotations

import functools
import io
import time

import numpy as np
import torch
from conftest import IMAGES_DIR, TAEF2_DIR
from PIL import Image
from rq import SimpleWorker

from latentq.cli.demo import load_image, psnr
from latentq.models.loader import LoadedModel, load_model, to_uint8
from latentq.models.registry import load_registry

__all__ = ["StockWorker", "decode_png", "fetch_while_fresh", "photo_latent", "psnr", "reference_pixels", "taef2",
           "wait_until", "wait_until_expired"]


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


# ---------------------------------------------------------------- presigned URLs with a 1 s expiry
# SigV4 URLs carry their signing second (X-Amz-Date) and lifetime (X-Amz-Expires): the tests read
# both from the URL and wait on them, instead of sleeping a margin that a busy machine can overrun.


def presigned_window(url: str) -> tuple[float, int]:
    """(the epoch second the URL was signed in, its lifetime in seconds), read from its query."""
    import calendar
    from urllib.parse import parse_qs, urlsplit

    query = parse_qs(urlsplit(url).query)
    signed = calendar.timegm(time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"))
    return float(signed), int(query["X-Amz-Expires"][0])


def fetch_while_fresh(make_url, attempts: int = 30):
    """Sign a URL and fetch it at once, until one fetch lands inside its (short) lifetime.

    Returns (url, response). A fetch that comes too late must be refused as *expired* (anything else,
    e.g. a signature mismatch, fails at once): so a slow machine costs attempts, never a wrong verdict.
    """
    import httpx

    for _ in range(attempts):
        time.sleep(1.02 - time.time() % 1)  # sign just after a second starts: the most of the window
        url = make_url()
        response = httpx.get(url, timeout=10)
        if response.status_code == 200:
            return url, response
        assert response.status_code == 403 and b"expired" in response.content, response.text
    raise TimeoutError(f"no fetch landed within the URL's lifetime in {attempts} attempts")


def wait_until_expired(url: str) -> None:
    """Sleep until the server's clock (whole seconds, as ours here) is past the URL's expiry."""
    signed, lifetime = presigned_window(url)
    while (remaining := signed + lifetime + 1.05 - time.time()) > 0:
        time.sleep(remaining)


assert psnr


class StockWorker(SimpleWorker):
    """RQ's ``SimpleWorker`` as shipped, less its command-channel listener.

    RQ stops that thread with a join that redis-py 8.2 can stretch to its 60 s poll (a race: about one burst
    in five here). The channel writes no Redis key, so what the tests compare with (RQ's own records) is
    unchanged; latentq's worker owns a bounded listener instead (``latentq.worker.commands``).
    """

    def subscribe(self) -> None:
        pass

    def unsubscribe(self) -> None:
        pass
