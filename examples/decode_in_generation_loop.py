"""The remote-VAE blog's "generation" use case on latentq.

A generation loop hands each image's final latent to latentq instead of
decoding it in-process, and starts the next image at once: the VAE never
loads next to the denoiser, and decoding overlaps generation.

The "denoiser" here is a toy that walks from noise to a target latent:
- default: TAEF2 latents of the photographs in ../shared/images, encoded
  through latentq's own encode queue (so the decoded images look like photos
  and their PSNR against the originals is printed);
- --tiny: random latents for a tiny random-weight SD 1.5 VAE.

    python examples/decode_in_generation_loop.py                 # own stack, TAEF2
    python examples/decode_in_generation_loop.py --tiny --count 4
    python examples/decode_in_generation_loop.py --redis-url redis://host:6379/0   # a running deployment
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import IMAGES_DIR, TAEF2_DIR, add_flags, deployment
from PIL import Image

from latentq.cli.demo import psnr


def photos(count: int, size: int) -> list[tuple[str, torch.Tensor]]:
    """Up to ``count`` photos, center-cropped to size x size: (name, (1, 3, H, W) in [0, 1])."""
    out = []
    for path in sorted(IMAGES_DIR.glob("*.png"))[:count]:
        picture = Image.open(path).convert("RGB")
        side = min(size, *picture.size) // 8 * 8
        left, top = (picture.width - side) // 2, (picture.height - side) // 2
        array = np.asarray(picture.crop((left, top, left + side, top + side))).copy()
        out.append((path.stem, torch.from_numpy(array).permute(2, 0, 1)[None].float().div(255).contiguous()))
    return out


def denoise(target: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
    """A stand-in for a diffusion loop: each step moves the noisy latent part of the way to ``target``."""
    latent = torch.randn(target.shape, generator=torch.Generator().manual_seed(seed))
    for step in range(steps):
        latent = latent + (target - latent) / (steps - step)  # the last step lands on the target
    return latent


class Decoder:
    """Submit and collect through Redis (latentq.Client) or, with --api, over HTTP."""

    def __init__(self, api_url: str | None, redis_url: str | None) -> None:
        import httpx

        from latentq import Client, HttpClient

        self.redis = Client(redis_url) if redis_url else None
        self.http = None if self.redis else HttpClient(api_url)
        self.api_url = api_url
        self._httpx = httpx

    def encode(self, image: torch.Tensor, model: str) -> torch.Tensor:
        if self.redis:
            from safetensors.torch import load

            job = self.redis.submit_encode(image, model)
            return load(self.redis.store.get(job.wait(300)[0].key))["latent"]
        # The remote-VAE encode route: raw float32 bytes, shape and dtype as query parameters.
        params = {"shape": list(image.shape), "dtype": "float32"}
        response = self._httpx.post(f"{self.api_url}/v1/models/{model}/encode", params=params,
                                    content=image.numpy().tobytes(), timeout=300)  # fmt: skip
        response.raise_for_status()
        shape = [int(d) for d in response.headers["shape"].strip("[]").split(",")]
        return torch.frombuffer(bytearray(response.content), dtype=torch.float32).reshape(shape)

    def submit(self, latent: torch.Tensor, model: str):
        return (self.redis or self.http).submit(latent, model=model, output_format="png")

    def read(self, job) -> bytes:
        job.wait(300)
        return job.read()

    def close(self) -> None:
        (self.redis or self.http).close()


def main(argv: list[str] | None = None) -> int:
    parser = add_flags(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter))
    parser.add_argument("--tiny", action="store_true", help="random latents for a tiny random SD 1.5 VAE")
    parser.add_argument("--model", help="model name (default: taef2, or sd15 with --tiny)")
    parser.add_argument("--count", type=int, default=3, help="images to generate (default 3)")
    parser.add_argument("--steps", type=int, default=8, help="toy denoising steps per image (default 8)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--out", type=Path, help="directory for the PNGs (default: a temporary one)")
    args = parser.parse_args(argv)
    tiny = args.tiny or not TAEF2_DIR.is_dir()
    model = args.model or ("sd15" if tiny else "taef2")
    out = args.out or Path(tempfile.mkdtemp(prefix="latentq-generations-"))
    out.mkdir(parents=True, exist_ok=True)

    with deployment(args, [model]) as where:
        decoder = Decoder(where.api_url, where.redis_url)
        try:
            if tiny:
                side = args.size // 8
                seeds = [torch.Generator().manual_seed(i) for i in range(args.count)]
                targets = [(f"random-{i}", None, torch.randn(1, 4, side, side, generator=g))
                           for i, g in enumerate(seeds)]
            else:
                targets = [(name, image, decoder.encode(image, model)) for name, image in photos(args.count, args.size)]
                print(f"encoded {len(targets)} photos from {IMAGES_DIR} into {model} latents "
                      f"{tuple(targets[0][2].shape)}")  # fmt: skip
            started = time.perf_counter()
            handed = []
            for index, (name, image, target) in enumerate(targets):
                latent = denoise(target, args.steps, seed=index)
                job = decoder.submit(latent, model)  # returns at once: the loop goes on generating
                print(f"generation {index} ({name}): {args.steps} steps, handed latent {tuple(latent.shape)} "
                      f"to latentq as job {job.id}", flush=True)  # fmt: skip
                handed.append((name, image, job))
            for name, image, job in handed:
                data = decoder.read(job)
                path = out / f"{name}.png"
                path.write_bytes(data)
                decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                quality = ""
                if image is not None:
                    original = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                    quality = f", PSNR {psnr(decoded, original):.1f} dB against the photo"
                print(f"  {path} {decoded.shape[1]}x{decoded.shape[0]}{quality}")
            elapsed = time.perf_counter() - started
            print(f"decoded {len(handed)} images with {model} in {elapsed:.2f} s while generating; saved in {out}")
        finally:
            decoder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
