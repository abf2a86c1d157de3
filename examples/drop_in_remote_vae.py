"""A plain diffusers script with one line changed: the pipeline's VAE decode runs on latentq.

    -pipe = StableDiffusionPipeline.from_pretrained(repo)
    +pipe = StableDiffusionPipeline.from_pretrained(repo, vae=latentq.RemoteVAE(url, model="sd15"))

The pipeline keeps doing everything else itself (its sizes from the VAE's config, the unscaling, the
postprocess); ``vae.decode`` sends the latents to latentq's queue and returns the decode. Here the "repo"
is a tiny random Stable Diffusion pipeline saved to a temporary directory (no weights to download), whose
VAE is the one the latentq stack serves as ``sd15``; the script checks that both runs give the same image.

    python examples/drop_in_remote_vae.py                          # own stack (embedded Redis, a worker, the API)
    python examples/drop_in_remote_vae.py --api http://host:8000   # a running latentq whose sd15 is this tiny VAE
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import TINY_CONFIGS, add_flags, deployment

import latentq

# What this tiny pipeline was saved without (no text encoder: the prompt arrives as embeddings).
NOT_SAVED = dict(text_encoder=None, tokenizer=None, safety_checker=None, feature_extractor=None, image_encoder=None)


def save_tiny_pipeline(path: Path) -> None:
    """A random-weight StableDiffusionPipeline; its VAE is seeded as the stack's sd15 model is."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)  # the seed the models file gives the worker
    vae = AutoencoderKL.from_config(TINY_CONFIGS["sd15"])
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=4)  # fmt: skip
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                              clip_sample=False, set_alpha_to_one=False)  # fmt: skip
    StableDiffusionPipeline(vae=vae, unet=unet, scheduler=scheduler, requires_safety_checker=False,
                            **NOT_SAVED).save_pretrained(path)  # fmt: skip


def generate(pipe, size: int, seed: int):
    """One call with the same inputs every time (random prompt embeddings stand in for a text encoder)."""
    g = torch.Generator().manual_seed(seed)
    embeds, negative = torch.randn(1, 7, 32, generator=g), torch.randn(1, 7, 32, generator=g)
    return pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, height=size, width=size,
                num_inference_steps=4, generator=torch.Generator().manual_seed(seed)).images[0]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = add_flags(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter))
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--out", type=Path, help="directory for the images (default: a temporary one)")
    parser.add_argument("--no-check", action="store_true", help="do not compare with the local VAE's image "
                        "(for a deployment whose sd15 has other weights)")  # fmt: skip
    args = parser.parse_args(argv)
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging

    logging.set_verbosity_error()  # the tiny pipeline's missing text encoder is on purpose
    out = args.out or Path(tempfile.mkdtemp(prefix="latentq-drop-in-"))
    out.mkdir(parents=True, exist_ok=True)
    repo = Path(tempfile.mkdtemp(prefix="latentq-tiny-sd-"))
    save_tiny_pipeline(repo)
    with deployment(args, ["sd15"]) as where:
        # --- the plain diffusers script, with its one changed line --------------------------
        pipe = StableDiffusionPipeline.from_pretrained(repo, vae=latentq.RemoteVAE(where.api_url, model="sd15"),
                                                       **NOT_SAVED)  # fmt: skip
        image = generate(pipe, args.size, seed=1)
        image.save(out / "remote.png")
        # -------------------------------------------------------------------------------------
        print(f"{type(pipe).__name__} with vae={pipe.vae!r}: {image.size[0]}x{image.size[1]} image "
              f"({out / 'remote.png'})")  # fmt: skip
        if not args.no_check:
            local = generate(StableDiffusionPipeline.from_pretrained(repo, **NOT_SAVED), args.size, seed=1)
            local.save(out / "local.png")
            diff = int(np.abs(np.asarray(image, dtype=np.int16) - np.asarray(local, dtype=np.int16)).max())
            print(f"the pipeline's own VAE gives the same image: max difference {diff} of 255")
            if diff > 1:
                return 1
    print("decoded on latentq with a one-line change")
    return 0


if __name__ == "__main__":
    sys.exit(main())
