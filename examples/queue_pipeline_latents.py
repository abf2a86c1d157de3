"""A generation loop that never waits for a VAE decode: each call's latents go to latentq's queue.

    queue = latentq.RemoteDecodeQueue(url, model="flux1")
    for seed in seeds:
        queue.generate(pipe, prompt_embeds=..., height=48, width=64, generator=...)   # output_type="latent", then submit
    urls = queue.urls()                                                                # collect when it suits

``generate`` runs the pipeline with ``output_type="latent"`` and submits its latents with the layout
parameters latentq needs, taken from the call (FLUX.1's packed tokens need the image height and
width). The pipeline here is a tiny random FluxPipeline (no weights to download) whose VAE is the one the
latentq stack serves as ``flux1``: the script checks each queued decode against the pipeline's own.

    python examples/queue_pipeline_latents.py                          # own stack
    python examples/queue_pipeline_latents.py --api http://host:8000   # a running latentq with this tiny flux1
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
from _common import TINY_CONFIGS, add_flags, deployment
from PIL import Image

import latentq


def tiny_flux_pipeline():
    """A random-weight FluxPipeline; its VAE is seeded as the stack's flux1 model is."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)  # the seed the models file gives the worker
    vae = AutoencoderKL.from_config(TINY_CONFIGS["flux1"])
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])  # fmt: skip
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer,
                        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)  # fmt: skip


def call(seed: int, height: int, width: int) -> dict:
    """One generation's inputs (random prompt embeddings stand in for the text encoders)."""
    g = torch.Generator().manual_seed(seed)
    return dict(prompt_embeds=torch.randn(1, 7, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g),
                height=height, width=width, num_inference_steps=4, generator=torch.Generator().manual_seed(seed))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = add_flags(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter))
    parser.add_argument("--count", type=int, default=4, help="generations (default 4)")
    parser.add_argument("--height", type=int, default=48, help="image height (default 48)")
    parser.add_argument("--width", type=int, default=64, help="image width (default 64)")
    parser.add_argument("--out", type=Path, help="directory for the images (default: a temporary one)")
    parser.add_argument("--no-check", action="store_true", help="do not compare with the pipeline's own decode")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="latentq-queue-"))
    out.mkdir(parents=True, exist_ok=True)
    pipe = tiny_flux_pipeline()
    with deployment(args, ["flux1"]) as where:
        queue = latentq.RemoteDecodeQueue(where.api_url, model="flux1", output_format="png")
        started = time.perf_counter()
        for seed in range(args.count):
            (job,) = queue.generate(pipe, **call(seed, args.height, args.width))
            print(f"generation {seed}: latents queued as job {job.id}; generating the next", flush=True)
        print(f"{args.count} generations done in {time.perf_counter() - started:.1f} s; collecting", flush=True)
        for seed, url in enumerate(queue.urls()):
            print(f"generation {seed}: {url}")
        pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in queue.read()]
        for seed, picture in enumerate(pictures):
            picture.save(out / f"{seed}.png")
        print(f"{len(pictures)} images of {pictures[0].size[0]}x{pictures[0].size[1]} in {out}")
        if not args.no_check:
            worst = 0
            for seed, picture in enumerate(pictures):
                own = pipe(**call(seed, args.height, args.width), output_type="np").images[0]
                own = (own * 255).round().astype(np.int16)
                worst = max(worst, int(np.abs(np.asarray(picture, dtype=np.int16) - own).max()))
            print(f"the pipeline's own decodes give the same images: max difference {worst} of 255")
            if worst > 1:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
