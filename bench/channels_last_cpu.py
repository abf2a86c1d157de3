"""channels_last against the default memory layout for VAE decodes on the CPU, side by side.

    .venv/bin/python bench/channels_last_cpu.py                # about 2 minutes on 2 cores
    .venv/bin/python bench/channels_last_cpu.py --px 128 --repeats 3

Why: ``latentq worker --channels-last auto`` puts 2-D decoders in channels_last on CUDA and on the CPU
(``models/loader.py``). This script is the claim's evidence on the CPU: each decoder in both layouts
from the same weights, timed alternately (median of ``--repeats`` calls after a warm-up), with the
largest difference of their uint8 outputs. TAEF2 uses its real weights (``../shared/models/taef2``);
the SD 1.5 and FLUX.1 VAEs are diffusers' ``AutoencoderKL`` from their full-size configs
(``common.VAE_CONFIGS``) and ``AutoencoderTiny`` its default config, with random weights: a decode
costs the same with the real ones. Markdown to stdout and to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import DEFAULT_TAEF2, RESULTS_DIR, VAE_CONFIGS, machine_summary, markdown_table


def decoders(taef2_dir: Path) -> dict[str, tuple[torch.nn.Module, int, int]]:
    """name -> (module with a ``decode``, latent channels, spatial factor)."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    from latentq.models.taef2 import TAEF2

    torch.manual_seed(0)
    return {
        "taef2 (real weights)": (TAEF2.from_file(taef2_dir / "taef2.safetensors"), 32, 8),
        "AutoencoderTiny (taesd config)": (AutoencoderTiny(), 4, 8),
        "SD 1.5 VAE (AutoencoderKL)": (AutoencoderKL(**VAE_CONFIGS["sd15"]), 4, 8),
        "FLUX.1 VAE (AutoencoderKL)": (AutoencoderKL(**VAE_CONFIGS["flux1"]), 16, 8),
    }


def decode(module: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    out = module.decode(z)
    return out if isinstance(out, torch.Tensor) else out.sample


def to_uint8(images: torch.Tensor, signed: bool) -> torch.Tensor:
    images = images / 2 + 0.5 if signed else images
    return (images.clamp(0, 1) * 255).round()


@torch.inference_mode()
def compare(module: torch.nn.Module, z: torch.Tensor, repeats: int) -> dict[str, float]:
    module = module.eval().requires_grad_(False)
    nhwc = copy.deepcopy(module).to(memory_format=torch.channels_last)
    z_nhwc = z.contiguous(memory_format=torch.channels_last)
    plain_out, nhwc_out = decode(module, z), decode(nhwc, z_nhwc)  # warm-up, and the outputs compared
    times: dict[str, list[float]] = {"plain": [], "nhwc": []}
    for _ in range(repeats):  # alternated, so a drifting machine moves both alike
        for name, mod, x in (("plain", module, z), ("nhwc", nhwc, z_nhwc)):
            started = time.perf_counter()
            decode(mod, x)
            times[name].append((time.perf_counter() - started) * 1000)
    signed = plain_out.min() < 0  # the KL VAEs decode to [-1, 1], TAEF2 and AutoencoderTiny to [0, 1]-ish
    diff = (to_uint8(plain_out, signed) - to_uint8(nhwc_out, signed)).abs().max().item()
    plain, fast = statistics.median(times["plain"]), statistics.median(times["nhwc"])
    return {"plain_ms": plain, "nhwc_ms": fast, "speedup": plain / fast, "max_diff": diff}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--px", type=int, default=256, help="output side in px (default 256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per layout (default 5)")
    parser.add_argument("--taef2", type=Path, default=DEFAULT_TAEF2, help=f"TAEF2 weights dir (default {DEFAULT_TAEF2})")
    parser.add_argument("--out", type=Path, help="markdown output (default bench/results/channels-last-cpu-<date>.md)")
    args = parser.parse_args(argv)
    out = args.out or RESULTS_DIR / f"channels-last-cpu-{dt.date.today().isoformat()}.md"
    rows = []
    for name, (module, channels, factor) in decoders(args.taef2).items():
        side = args.px // factor
        result = compare(module, torch.randn(1, channels, side, side), args.repeats)
        rows.append([name, f"{args.px}x{args.px}", f"{result['plain_ms']:.1f}", f"{result['nhwc_ms']:.1f}",
                     f"{result['speedup']:.2f}x", f"{result['max_diff']:.0f}"])  # fmt: skip
        print(f"{name}: {result}", file=sys.stderr)
    text = (
        f"## channels_last on the CPU ({dt.datetime.now():%Y-%m-%d %H:%M})\n\n"
        f"Machine: {machine_summary()}.\n"
        f"Command: `python bench/channels_last_cpu.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
        f"Median of {args.repeats} decodes of one latent per layout, alternated, after a warm-up each; same weights.\n\n"
        + markdown_table(["decoder", "output", "default layout ms", "channels_last ms", "speed-up",
                          "max uint8 diff"], rows)  # fmt: skip
        + "\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
