"""MP4 encoding overlapped with the decode (issue 15): decode-then-encode vs streamed, side by side.

One Wan 2.1 VAE (random weights; the tests' tiny config by default, ``--full`` the released architecture
for a GPU) decodes the same long latent video again and again, alternating two ways of making its MP4:

- ``decode, then encode``: what the worker does without streaming (and on the CPU by default):
  ``decode_group`` -> uint8 pixels -> ``encode_output`` (x264), one after the other;
- ``streamed``: the worker's path for an MP4 group with encode threads: the job's encoder runs on a thread
  (``StreamedVideo.encode``) and muxes each temporal chunk while the decoder makes the next
  (``decode_group(..., stream=GroupStream)``).

Both make the same file (checked, byte for byte). The wall time per video is the median of ``--videos``
runs of each, after a warm-up. The gain is bounded by the encode's share of the total: on a GPU the
decode is fast and x264 (on the CPU) is a large share; on a CPU the decode is slow and uses every core
(``--torch-threads 1`` leaves a core to x264, as a GPU decode leaves the CPU to it).

    .venv/bin/python bench/video_stream.py                       # ~1-2 min on 2 cores
    .venv/bin/python bench/video_stream.py --torch-threads 1     # the decode on one core, x264 beside it
    python bench/video_stream.py --device cuda --full --frames 81 --height 480 --width 832
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, VAE_CONFIGS, markdown_table  # noqa: E402

from latentq.models.loader import LoadedModel, load_model  # noqa: E402
from latentq.models.registry import BUILTIN_MODELS  # noqa: E402
from latentq.spec import DecodeRequest  # noqa: E402
from latentq.worker.encode import encode_output  # noqa: E402
from latentq.worker.pipeline import decode_group, streamable  # noqa: E402
from latentq.worker.video_stream import GroupStream  # noqa: E402

TINY_WAN = {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1,
            "temperal_downsample": [False, True, True]}  # tests/tiny_configs.py's  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))  # fmt: skip
    parser.add_argument("--frames", type=int, default=33, help="video frames, 4k+1 (default 33)")
    parser.add_argument("--height", type=int, default=128, help="video height, a multiple of 8 (default 128)")
    parser.add_argument("--width", type=int, default=128, help="video width, a multiple of 8 (default 128)")
    parser.add_argument("--videos", type=int, default=5, help="timed videos per mode (default 5)")
    parser.add_argument("--quality", type=int, default=90, help="MP4 quality, 1-100 (default 90, the API's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--full", action="store_true", help="the released Wan 2.1 VAE architecture (for a GPU)")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch's CPU threads (0: its default)")
    parser.add_argument("--out", type=Path, help=f"also write the table here (e.g. {RESULTS_DIR}/video-stream.md)")
    return parser.parse_args(argv)


def make_model(args: argparse.Namespace) -> LoadedModel:
    config = VAE_CONFIGS["wan"] if args.full else TINY_WAN
    spec = dataclasses.replace(BUILTIN_MODELS["wan"], source=None, config=dict(config))
    return load_model(spec, args.device)


def _sync(model: LoadedModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def decode_then_encode(model: LoadedModel, request: DecodeRequest, latent: torch.Tensor) -> tuple[bytes, float, float]:
    """The unstreamed path: (the MP4, decode seconds, encode seconds)."""
    started = time.perf_counter()
    decoded = decode_group(model, [request], [latent])[0]
    pixels = decoded.pixels  # waits for the device's copy
    decoded_at = time.perf_counter()
    (mp4,) = encode_output(None, pixels, request)
    return mp4.data, decoded_at - started, time.perf_counter() - decoded_at


def streamed(model: LoadedModel, request: DecodeRequest, latent: torch.Tensor, pool: ThreadPoolExecutor) -> bytes:
    """The streamed path: the encoder on ``pool`` takes each chunk while the next decodes."""
    group = GroupStream(model.path, 1)
    encoding = pool.submit(group.videos[0].encode, request)
    try:
        decode_group(model, [request], [latent], stream=group)
    finally:
        group.end()
    return encoding.result()[0].data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if (args.frames - 1) % 4 or args.height % 8 or args.width % 8:
        raise SystemExit("--frames must be 4k+1, --height and --width multiples of 8")
    model = make_model(args)
    # Untiled, as the worker decodes a video within the spec's tile_above_pixels and tile_above_frames (64), or
    # any video a job asks untiled (tile=false): streamed only then (Wan's tiles are spatial and blended).
    request = DecodeRequest(model="wan", output_format="mp4", quality=args.quality, tile=False)
    latent = torch.randn(1, 16, (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    if not streamable(model, [request], [latent]):
        raise SystemExit("this model does not decode chunk by chunk: nothing to stream")
    pool = ThreadPoolExecutor(1, thread_name_prefix="encode")
    reference, _, _ = decode_then_encode(model, request, latent)  # warm-up, both paths
    if streamed(model, request, latent, pool) != reference:
        raise SystemExit("the streamed MP4 differs from the unstreamed one")

    plain_s, decode_s, encode_s, stream_s = [], [], [], []
    for _ in range(args.videos):  # alternated: drift on a shared machine hits both alike
        _sync(model)
        started = time.perf_counter()
        data, decode, encode = decode_then_encode(model, request, latent)
        plain_s.append(time.perf_counter() - started)
        decode_s.append(decode)
        encode_s.append(encode)
        started = time.perf_counter()
        same = streamed(model, request, latent, pool) == data
        stream_s.append(time.perf_counter() - started)
        if not same:
            raise SystemExit("the streamed MP4 differs from the unstreamed one")
    pool.shutdown()

    plain, stream = statistics.median(plain_s), statistics.median(stream_s)
    decode, encode = statistics.median(decode_s), statistics.median(encode_s)
    where = f"{args.device}, torch threads {torch.get_num_threads()}"
    title = (f"Wan 2.1 VAE ({'released architecture' if args.full else 'tiny config'}, random weights), "
             f"{args.frames} frames {args.width}x{args.height}, MP4 quality {args.quality}, {where}; "
             f"median of {args.videos} videos")  # fmt: skip
    table = markdown_table(
        ["path", "wall s / video", "decode s", "encode s", "speed-up"],
        [["decode, then encode", f"{plain:.3f}", f"{decode:.3f}", f"{encode:.3f}", "1.00x"],
         ["streamed (encode beside the decode)", f"{stream:.3f}", "", "", f"{plain / stream:.2f}x"],
         ["ideal overlap: max(decode, encode)", f"{max(decode, encode):.3f}", "", "", f"{plain / max(decode, encode):.2f}x"]],
    )  # fmt: skip
    text = f"{title}\n\n{table}\n\nSame MP4 bytes on both paths: yes ({len(reference)} bytes).\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
