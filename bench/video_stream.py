"""MP4 encoding overlapped with the decode (issue 15): decode-then-encode vs streamed, side by side.

One Wan VAE (``AutoencoderKLWan``, random weights) decodes the same latent video again and again,
alternating two ways of making its MP4:

- ``decode, then encode``: what the worker does without streaming (and on the CPU by default):
  ``decode_group`` -> uint8 pixels -> ``encode_output`` (x264 veryfast), one after the other;
- ``streamed``: the worker's path for an MP4 group with encode threads: the job's encoder runs on a thread
  (``StreamedVideo.encode``, an ``Mp4Writer``) and muxes each temporal chunk while the decoder makes the
  next (``decode_group(..., stream=GroupStream)``).

The overlap can save at most the shorter of the two, min(decode, encode), so it shows only where the
encode is a real share of the decode. On a GPU the decode is fast and x264 (on the CPU) a large share:
``--device cuda --full`` (the released Wan 2.1 architecture). On a CPU a Wan decode is many times slower
than x264 at any frame size (both scale with the pixels; Wan 2.1's full-size stages cost more per pixel than
x264 even 2 channels wide), so the default is the narrowest decoder: the Wan 2.2 layout (``--model wan22``:
patchified, its last stages at half the frame size), base_dim 2, dim_mult 1,1,1,1, no extra res blocks,
and torch on one thread (``--torch-threads 1``) so that the decode and x264 each have a core, as a GPU
decode leaves the CPU to x264.

Per video: decode and encode, each timed alone (in the sequential path; the encode's CPU time too, as
x264's own threads use more than one core when they can), the streamed path's decode alone (its chunks
drained, not encoded: its post-processing, chunk by chunk, is a little faster than on the whole video), the
sequential and streamed walls, the ideal max(chunked decode, encode), the speed-up, and the overlap
achieved: (sequential - streamed) / (sequential - ideal), the share of the most streaming could save (with
both decodes equally fast, (sequential - streamed) / min(decode, encode)). Medians of ``--videos``, after a
warm-up that checks that the streamed encoder is given the very frames of the whole decode (byte for byte);
the MP4s' bytes are compared too, and counted: x264 on its own threads is not bit-reproducible at all sizes.

    .venv/bin/python bench/video_stream.py                  # wan22 base_dim 2, 81 frames 256x448: ~1.5 min on 2 cores
    .venv/bin/python bench/video_stream.py --model wan      # Wan 2.1's layout, as narrow: the encode a small share
    python bench/video_stream.py --device cuda --full --height 480 --width 832 --torch-threads 0   # a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, VAE_CONFIGS, markdown_table

from latentq.core.request import DecodeRequest
from latentq.models.loader import LoadedModel, load_model
from latentq.models.registry import BUILTIN_MODELS
from latentq.worker import video_stream
from latentq.worker.encode import Mp4Writer, encode_output
from latentq.worker.pipeline import decode_group, streamable
from latentq.worker.video_stream import GroupStream

# What --model changes in AutoencoderKLWan's config besides the widths: Wan 2.2 TI2V-5B's layout (tests'
# pipelines_video.wan22) is 48 latent channels, 2x2 patches inside the VAE (16x in all), residual up blocks.
LAYOUTS = {
    "wan": {"z_dim": 16, "temperal_downsample": [False, True, True]},
    "wan22": {"z_dim": 48, "in_channels": 12, "out_channels": 12, "is_residual": True, "patch_size": 2,
              "scale_factor_spatial": 16, "scale_factor_temporal": 4, "temperal_downsample": [False, True, True],
              "latents_mean": torch.linspace(-0.3, 0.3, 48).tolist(), "latents_std": torch.linspace(0.5, 2.0, 48).tolist()},
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))  # fmt: skip
    parser.add_argument("--model", choices=sorted(LAYOUTS), default="wan22",
                        help="the VAE's layout: wan (Wan 2.1, 8x) or wan22 (Wan 2.2, patchified, 16x; default)")
    parser.add_argument("--base-dim", type=int, default=2, help="the VAE's base_dim (default 2; Wan 2.1's: 96)")
    parser.add_argument("--dim-mult", default="1,1,1,1",
                        help="the VAE's dim_mult, comma-separated (default 1,1,1,1; Wan 2.1's: 1,2,4,4)")
    parser.add_argument("--res-blocks", type=int, default=0, help="the VAE's num_res_blocks (default 0; Wan 2.1's: 2)")
    parser.add_argument("--full", action="store_true",
                        help="the released Wan 2.1 VAE architecture (for a GPU): --model wan, the widths above ignored")
    parser.add_argument("--frames", type=int, default=81, help="video frames, 4k+1 (default 81, Wan's)")
    parser.add_argument("--height", type=int, default=256, help="video height (default 256)")
    parser.add_argument("--width", type=int, default=448, help="video width (default 448)")
    parser.add_argument("--videos", type=int, default=11, help="timed videos per path (default 11)")
    parser.add_argument("--quality", type=int, default=90, help="MP4 quality, 1-100 (default 90, the API's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch's CPU threads (default 1: a core left to x264; 0: torch's default)")
    parser.add_argument("--out", type=Path, help=f"also write the tables here (e.g. {RESULTS_DIR}/video-stream.md)")
    args = parser.parse_args(argv)
    if args.full:
        args.model = "wan"
    return args


def vae_config(args: argparse.Namespace) -> dict:
    if args.full:
        return dict(VAE_CONFIGS["wan"])
    widths = {"base_dim": args.base_dim, "dim_mult": [int(m) for m in args.dim_mult.split(",")],
              "num_res_blocks": args.res_blocks}  # fmt: skip
    return {**LAYOUTS[args.model], **widths}


def describe(args: argparse.Namespace) -> str:
    if args.full:
        return "Wan 2.1 VAE (released architecture, random weights)"
    name = {"wan": "Wan 2.1", "wan22": "Wan 2.2"}[args.model]
    return (f"{name} VAE layout (random weights), base_dim {args.base_dim}, dim_mult [{args.dim_mult}], "
            f"num_res_blocks {args.res_blocks}")  # fmt: skip


def decode_then_encode(model: LoadedModel, request: DecodeRequest,
                       latent: torch.Tensor) -> tuple[bytes, float, float, float]:  # fmt: skip
    """The unstreamed path: (the MP4, decode seconds, encode seconds, the encode's CPU seconds: x264's threads
    may use more than one core when it runs alone)."""
    started = time.perf_counter()
    decoded = decode_group(model, [request], [latent])[0]
    pixels = decoded.pixels  # waits for the device's copy
    decoded_at, cpu = time.perf_counter(), time.process_time()
    (mp4,) = encode_output(None, pixels, request)
    return mp4.data, decoded_at - started, time.perf_counter() - decoded_at, time.process_time() - cpu


def _drain(video: video_stream.StreamedVideo) -> None:
    for chunk in video.stream:
        chunk.wait()


def chunked_decode(model: LoadedModel, request: DecodeRequest, latent: torch.Tensor, pool: ThreadPoolExecutor) -> None:
    """The streamed path's decode alone: its chunks made uint8 and taken from the stream, not encoded. Its
    post-processing runs chunk by chunk (on the whole video in ``decode_then_encode``), so it can differ."""
    group = GroupStream(model.path, 1)
    draining = pool.submit(_drain, group.videos[0])
    try:
        decode_group(model, [request], [latent], stream=group)
    finally:
        group.end()
    draining.result()


def streamed(model: LoadedModel, request: DecodeRequest, latent: torch.Tensor, pool: ThreadPoolExecutor) -> bytes:
    """The streamed path: the encoder on ``pool`` takes each chunk while the next decodes."""
    group = GroupStream(model.path, 1)
    encoding = pool.submit(group.videos[0].encode, request)
    try:
        decode_group(model, [request], [latent], stream=group)
    finally:
        group.end()
    return encoding.result()[0].data


class _Recording(Mp4Writer):
    """``Mp4Writer`` keeping a copy of the frames it is given (the check only, not timed)."""

    frames_seen: list[torch.Tensor] = []

    def write(self, frames: torch.Tensor) -> None:
        _Recording.frames_seen.append(frames.clone())
        super().write(frames)


def streamed_frames(model: LoadedModel, request: DecodeRequest, latent: torch.Tensor,
                    pool: ThreadPoolExecutor) -> torch.Tensor:  # fmt: skip
    """The frames the streamed path's encoder was given, all chunks in order: (F, H, W, 3) uint8."""
    _Recording.frames_seen = []
    with mock.patch.object(video_stream, "Mp4Writer", _Recording):
        streamed(model, request, latent, pool)
    return torch.cat(_Recording.frames_seen)


@dataclasses.dataclass
class Video:
    """One timed video: each path's wall, the sequential path's decode and encode (each alone), and the
    streamed path's decode alone."""

    decode: float
    chunked: float
    encode: float
    encode_cpu: float
    sequential: float
    streamed: float

    @property
    def ideal(self) -> float:
        """The streamed path's floor: its decode and the encode fully overlapped."""
        return max(self.chunked, self.encode)

    @property
    def achieved(self) -> float:
        """The share of the most streaming could save, sequential - ideal, that it saved: with the two
        decodes equally fast, (sequential - streamed) / min(decode, encode)."""
        return (self.sequential - self.streamed) / (self.sequential - self.ideal)

    def row(self, label: str) -> list[str]:
        return [label, f"{self.decode:.3f}", f"{self.chunked:.3f}", f"{self.encode:.3f}", f"{self.encode_cpu:.3f}", f"{self.sequential:.3f}",
                f"{self.streamed:.3f}",
                f"{self.ideal:.3f}", f"{self.sequential / self.streamed:.2f}x", f"{self.sequential / self.ideal:.2f}x",
                f"{self.achieved:.0%}"]  # fmt: skip


HEADERS = ["video", "decode s", "chunked decode s", "encode s", "encode CPU s", "sequential s", "streamed s", "ideal s",
           "speed-up", "ideal speed-up", "overlap achieved"]  # fmt: skip
LEGEND = ("decode s, encode s: each alone, in the sequential path; chunked decode s: the streamed path's decode "
          "alone (its frames drained, not encoded); encode CPU s: x264's threads, all cores' time; ideal s: "
          "max(chunked decode, encode); overlap achieved: (sequential - streamed) / (sequential - ideal), the share "
          "of the most streaming could save (per video, then the median).")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    spec = dataclasses.replace(BUILTIN_MODELS[args.model], source=None, config=vae_config(args))
    factor = spec.spatial_factor
    if (args.frames - 1) % 4 or args.height % factor or args.width % factor:
        raise SystemExit(f"--frames must be 4k+1, --height and --width multiples of {factor} for {args.model}")
    model = load_model(spec, args.device)
    # Untiled, as the worker decodes a video within the spec's tile_above_pixels and tile_above_frames, or
    # any video a job asks untiled (tile=false): streamed only then (Wan's tiles are spatial and blended).
    request = DecodeRequest(model=args.model, output_format="mp4", quality=args.quality, tile=False)
    latent = torch.randn(1, spec.latent_channels, (args.frames - 1) // 4 + 1, args.height // factor,
                         args.width // factor, generator=torch.Generator().manual_seed(0))  # fmt: skip
    if not streamable(model, [request], [latent]):
        raise SystemExit("this model does not decode chunk by chunk: nothing to stream")
    pool = ThreadPoolExecutor(1, thread_name_prefix="encode")
    # Warm-up, both paths, and the check: the streamed encoder is given the very frames of the whole decode.
    pixels = decode_group(model, [request], [latent])[0].pixels.cpu()
    reference = encode_output(None, pixels, request)[0].data
    if not torch.equal(streamed_frames(model, request, latent, pool), pixels):
        raise SystemExit("the streamed path's frames differ from the whole decode's")

    videos: list[Video] = []
    same = {"sequential": 0, "streamed": 0}  # MP4s identical to the warm-up's, byte for byte
    for _ in range(args.videos):  # alternated: drift on a shared machine hits both alike
        started = time.perf_counter()
        data, decode, encode, encode_cpu = decode_then_encode(model, request, latent)
        sequential = time.perf_counter() - started
        same["sequential"] += data == reference
        started = time.perf_counter()
        chunked_decode(model, request, latent, pool)
        chunked = time.perf_counter() - started
        started = time.perf_counter()
        data = streamed(model, request, latent, pool)
        videos.append(Video(decode, chunked, encode, encode_cpu, sequential, time.perf_counter() - started))
        same["streamed"] += data == reference
    pool.shutdown()

    median = Video(*(statistics.median(getattr(v, f.name) for v in videos) for f in dataclasses.fields(Video)))
    achieved = statistics.median(v.achieved for v in videos)
    where = f"{args.device}, torch threads {torch.get_num_threads()}"
    title = (f"{describe(args)}, {args.frames} frames {args.width}x{args.height}, MP4 quality {args.quality} "
             f"(x264 veryfast), {where}; median of {args.videos} videos, the paths alternated")  # fmt: skip
    summary = median.row("median")
    summary[-1] = f"{achieved:.0%}"  # the median of the per-video shares
    table = markdown_table(HEADERS, [summary])
    runs = markdown_table(HEADERS, [v.row(str(i + 1)) for i, v in enumerate(videos)])
    text = (f"{title}\n\n{table}\n\n{LEGEND}\n\nEach video:\n\n{runs}\n\n"
            f"Same frames given to x264 on both paths: yes ({pixels.shape[0]} frames, byte for byte). MP4 bytes "
            f"identical to the warm-up's ({len(reference)} bytes): sequential {same['sequential']} of {args.videos}, "
            f"streamed {same['streamed']} of {args.videos} (x264 on its own threads is not always bit-reproducible: "
            f"the same frames, encoded twice, can differ).\n")  # fmt: skip
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
