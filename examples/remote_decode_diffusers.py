"""diffusers' own ``remote_decode`` / ``remote_encode``, unchanged, pointed at a latentq API.

The remote-VAE blog's basic examples (an SD latent to an image, FLUX's packed
latents with height and width) and its options (png, ``output_type="pt"``
with and without ``partial_postprocess``), plus an encode round trip. Only
the endpoint differs: ``{api}/v1/models/{model}/decode`` (and ``/encode``).

    python examples/remote_decode_diffusers.py                        # own stack: tiny random sd15 + flux1
    python examples/remote_decode_diffusers.py --api http://host:8000 --flux-model ""   # skip FLUX
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from _common import add_flags, deployment


def main(argv: list[str] | None = None) -> int:
    parser = add_flags(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter))
    parser.add_argument("--sd-model", default="sd15", help="an SD 1.x-style model (default sd15)")
    parser.add_argument("--flux-model", default="flux1", help='a FLUX.1-style packed model ("" to skip)')
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--out", type=Path, help="directory for the images (default: a temporary one)")
    args = parser.parse_args(argv)
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.utils.remote_utils import remote_decode, remote_encode

    out = args.out or Path(tempfile.mkdtemp(prefix="latentq-remote-"))
    out.mkdir(parents=True, exist_ok=True)
    size = args.size
    models = [args.sd_model] + ([args.flux_model] if args.flux_model else [])
    with deployment(args, models) as where:
        sd = f"{where.api_url}/v1/models/{args.sd_model}/decode"
        latent = torch.randn([1, 4, size // 8, size // 8], dtype=torch.float16)

        image = remote_decode(endpoint=sd, tensor=latent, scaling_factor=0.18215)  # the blog's basic example
        image.save(out / "sd.jpg")
        print(f"remote_decode -> {image.format} {image.size[0]}x{image.size[1]} PIL image ({out / 'sd.jpg'})")

        image = remote_decode(endpoint=sd, tensor=latent, scaling_factor=0.18215, image_format="png")
        image.save(out / "sd.png")
        print(f"remote_decode(image_format='png') -> {image.format} {image.size[0]}x{image.size[1]}")

        pixels = remote_decode(endpoint=sd, tensor=latent, scaling_factor=0.18215, output_type="pt",
                               partial_postprocess=True, return_type="pt")  # fmt: skip
        print(f"remote_decode(output_type='pt', partial_postprocess=True) -> {pixels.dtype} {tuple(pixels.shape)}")
        floats = remote_decode(endpoint=sd, tensor=latent, scaling_factor=0.18215, output_type="pt", return_type="pt")
        print(f"remote_decode(output_type='pt') -> {floats.dtype} {tuple(floats.shape)} "
              f"in [{float(floats.min()):.2f}, {float(floats.max()):.2f}]")  # fmt: skip
        image = remote_decode(endpoint=sd, tensor=latent, scaling_factor=0.18215, output_type="pt",
                              processor=VaeImageProcessor(vae_scale_factor=8))  # fmt: skip
        print(f"remote_decode(output_type='pt', processor=VaeImageProcessor) -> {image.size[0]}x{image.size[1]}")

        if args.flux_model:
            flux = f"{where.api_url}/v1/models/{args.flux_model}/decode"
            packed = torch.randn([1, (size // 16) ** 2, 64], dtype=torch.float16)
            image = remote_decode(endpoint=flux, tensor=packed, height=size, width=size, scaling_factor=0.3611,
                                  shift_factor=0.1159)  # fmt: skip
            image.save(out / "flux.jpg")
            print(f"remote_decode(packed {tuple(packed.shape)}, height, width) -> {image.size[0]}x{image.size[1]}")

        encoded = remote_encode(endpoint=f"{where.api_url}/v1/models/{args.sd_model}/encode", image=image.resize(
            (size, size)), scaling_factor=0.18215)  # fmt: skip
        again = remote_decode(endpoint=sd, tensor=encoded, scaling_factor=0.18215, image_format="png")
        print(f"remote_encode -> {encoded.dtype} {tuple(encoded.shape)}; "
              f"decoded again to {again.size[0]}x{again.size[1]}")
    print(f"all remote_decode / remote_encode calls answered by latentq; images in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
