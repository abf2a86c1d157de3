"""What the examples share: the --api / --redis-url flags, and a throwaway latentq stack when neither is given.

With no flag an example starts its own stack (embedded Redis, worker
processes, the API in a thread) serving small random-weight models written to
a temporary models file, plus the real TAEF2 when ../shared/models/taef2 is
there. Nothing here is needed to *use* latentq: it only keeps the examples
self-contained.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
TAEF2_DIR = SHARED / "models" / "taef2"
IMAGES_DIR = SHARED / "images"

# Shrunken configs of the real diffusers classes: random weights, the same code paths, 8x spatial.
_KL = dict(
    in_channels=3, out_channels=3, block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, sample_size=64,
)  # fmt: skip
TINY_CONFIGS = {
    "sd15": dict(_KL, latent_channels=4, scaling_factor=0.18215),
    "flux1": dict(_KL, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
                  use_quant_conv=False, use_post_quant_conv=False),
    "hunyuanvideo": dict(
        latent_channels=16, block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4,
        down_block_types=["HunyuanVideoDownBlock3D"] * 4, up_block_types=["HunyuanVideoUpBlock3D"] * 4,
        spatial_compression_ratio=8, temporal_compression_ratio=4,
    ),
}  # fmt: skip


def add_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--api", help="use this running latentq API (http://host:port) instead of starting one")
    parser.add_argument("--redis-url", help="use this latentq deployment's Redis instead of starting a stack")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of a self-started stack")
    return parser


@dataclass
class Deployment:
    api_url: str | None  # None: no HTTP API reachable (never happens with the flags above)
    redis_url: str | None  # None: only the HTTP API is known (--api)
    started: bool  # True: our own throwaway stack with tiny random-weight models


def write_models_file(directory: Path, models: list[str]) -> Path:
    lines = []
    for name in models:
        if name == "taef2":
            if not TAEF2_DIR.is_dir():
                raise SystemExit(f"the taef2 example needs its weights in {TAEF2_DIR}; try --tiny")
            lines.append(f'[models.taef2]\nsource = "{TAEF2_DIR}"\n')
            continue
        (directory / f"{name}.json").write_text(json.dumps(TINY_CONFIGS[name]))
        # preview = "": no tiny-autoencoder preview decoder to download for a random model.
        lines.append(f'[models.{name}]\nconfig = "{name}.json"\nseed = 0\npreview = ""\n')
    path = directory / "models.toml"
    path.write_text("\n".join(lines))
    return path


@contextlib.contextmanager
def deployment(args: argparse.Namespace, models: list[str]) -> Iterator[Deployment]:
    """The latentq to talk to: the one the flags name, or a fresh stack serving ``models``."""
    if args.api:
        yield Deployment(args.api.rstrip("/"), None, started=False)
        return
    from latentq.local.stack import Stack, StackOptions

    if args.redis_url:
        # Someone else's workers decode; we only add an API (for the HTTP examples) on that Redis.
        with Stack(StackOptions(models=models, workers=0, port=0, redis_url=args.redis_url)) as stack:
            yield Deployment(stack.api_url, args.redis_url, started=False)
        return
    with tempfile.TemporaryDirectory(prefix="latentq-example-") as tmp:
        # Our own Redis, never $LATENTQ_REDIS_URL: random-weight workers must not join a real deployment.
        os.environ.pop("LATENTQ_REDIS_URL", None)
        os.environ["LATENTQ_MODELS"] = str(write_models_file(Path(tmp), models))
        os.environ["LATENTQ_STORE"] = str(Path(tmp) / "results")
        print(f"starting a latentq stack: embedded Redis, {args.workers} worker(s) serving {', '.join(models)}",
              flush=True)  # fmt: skip
        with Stack(StackOptions(models=models, workers=args.workers, port=0)) as stack:
            print(f"latentq API at {stack.api_url}", flush=True)
            yield Deployment(stack.api_url, stack.redis_url, started=True)
