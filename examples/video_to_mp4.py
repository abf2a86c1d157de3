"""The remote-VAE blog's HunyuanVideo example on latentq: a video latent in, an MP4 out.

By default a small random-weight HunyuanVideo VAE decodes a random latent
(shapes and code paths of the real one). Through Redis it uses
``latentq.remote_decode`` (diffusers' signature, no HTTP); with --api it uses
diffusers' own ``remote_decode`` against latentq's remote-VAE route.

    python examples/video_to_mp4.py --frames 3 --out video.mp4
    python examples/video_to_mp4.py --api http://host:8000 --model hunyuanvideo
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import add_flags, deployment


def main(argv: list[str] | None = None) -> int:
    parser = add_flags(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter))
    parser.add_argument("--model", default="hunyuanvideo", help="a video model (default hunyuanvideo)")
    parser.add_argument("--frames", type=int, default=3, help="latent frames; the video has (f - 1) * 4 + 1")
    parser.add_argument("--height", type=int, default=32, help="video height in pixels (default 32)")
    parser.add_argument("--width", type=int, default=48, help="video width in pixels (default 48)")
    parser.add_argument("--out", type=Path, help="the MP4 to write (default: in a temporary directory)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="latentq-video-")) / "video.mp4"
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 16, args.frames, args.height // 8, args.width // 8, generator=generator)

    with deployment(args, [args.model]) as where:
        started = time.perf_counter()
        if where.redis_url:
            import latentq

            video = latentq.remote_decode(where.redis_url, latent, output_type="mp4", return_type="mp4",
                                          model=args.model)
            how = "latentq.remote_decode (straight to Redis)"
        else:
            from diffusers.utils.remote_utils import remote_decode

            endpoint = f"{where.api_url}/v1/models/{args.model}/decode"
            video = remote_decode(endpoint=endpoint, tensor=latent, output_type="mp4", return_type="mp4")
            how = f"diffusers' remote_decode at {endpoint}"
        elapsed = time.perf_counter() - started

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(video)
    import av

    with av.open(io.BytesIO(video)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    height, width = frames[0].shape[:2]
    print(f"decoded latent {tuple(latent.shape)} with {how} in {elapsed:.2f} s")
    print(f"wrote {out}: {len(frames)} frames of {width}x{height}, {len(video)} bytes of MP4")
    return 0


if __name__ == "__main__":
    sys.exit(main())
