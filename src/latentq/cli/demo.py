"""``latentq demo``: the main job in one command.

Encodes sample photographs with TAEF2's encoder, submits the latents through
the whole system (Redis, a worker process, the object store, the HTTP API),
waits, saves the decoded images and prints each one's PSNR against the
original and the throughput.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import Settings
from ..local.stack import Stack, StackOptions
from ..models.loader import load_model
from ..models.registry import load_registry
from ..producer.http import HttpClient

__all__ = ["DemoRow", "load_image", "psnr", "run_demo"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def load_image(path: Path, multiple: int = 8) -> np.ndarray:
    """RGB uint8 (H, W, 3), cropped to multiples of the VAE's spatial factor."""
    image = np.asarray(Image.open(path).convert("RGB"))
    height, width = image.shape[0] // multiple * multiple, image.shape[1] // multiple * multiple
    return np.ascontiguousarray(image[:height, :width])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@dataclass
class DemoRow:
    name: str
    width: int
    height: int
    psnr: float
    output: Path


def run_demo(images_dir: Path, out_dir: Path, *, device: str = "cpu", workers: int = 1, port: int = 0,
             min_psnr: float = 28.0, echo=print) -> list[DemoRow]:  # fmt: skip
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images in {images_dir}")
    settings = Settings.from_env()
    spec = load_registry(settings.models_file).get("taef2")
    echo(f"loading the TAEF2 encoder from {spec.source}")
    encoder = load_model(spec, device)
    originals = {p.name: load_image(p, spec.spatial_factor) for p in paths}
    latents = {}
    for name, pixels in originals.items():
        x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255
        latents[name] = encoder.encode(x)
    out_dir.mkdir(parents=True, exist_ok=True)
    echo(f"starting Redis, {workers} worker(s) and the API")
    options = StackOptions(models=["taef2"], workers=workers, device=device, port=port)
    rows: list[DemoRow] = []
    with Stack(options) as stack, HttpClient(stack.api_url, timeout=120) as http:
        echo(f"API at {stack.api_url} (OpenAPI at {stack.api_url}/docs); submitting {len(latents)} latents")
        started = time.perf_counter()
        jobs = {name: http.submit(latent, model="taef2", output_format="png") for name, latent in latents.items()}
        for name, job in jobs.items():
            result = job.wait(timeout=300)[0]
            data = http.http.get(result.url).content
            decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            target = out_dir / f"{Path(name).stem}.decoded.png"
            target.write_bytes(data)
            rows.append(DemoRow(name, result.width, result.height, psnr(decoded, originals[name]), target))
        elapsed = time.perf_counter() - started
    echo(f"{'image':<20} {'size':>10} {'PSNR':>9}  output")
    for row in rows:
        echo(f"{row.name:<20} {f'{row.width}x{row.height}':>10} {row.psnr:7.2f} dB  {row.output}")
    megapixels = sum(r.width * r.height for r in rows) / 1e6
    echo(f"throughput: {len(rows)} images in {elapsed:.2f} s = {len(rows) / elapsed:.2f} images/s, "
         f"{megapixels / elapsed:.2f} MP/s (submit to last result, through Redis, worker, store and API)")  # fmt: skip
    worst = min(r.psnr for r in rows)
    echo(f"lowest PSNR {worst:.2f} dB (target >= {min_psnr} dB): {'ok' if worst >= min_psnr else 'FAILED'}")
    return rows
