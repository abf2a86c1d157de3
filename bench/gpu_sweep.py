r"""VAE decode sweep on a CUDA GPU: SD 1.5, SDXL and FLUX.1 VAEs, batch 1-16, fp16/bf16, tiled and not.

    python bench/gpu_sweep.py                 # full sweep, about 8 min on an H100 (an estimate)
    python bench/gpu_sweep.py --quick         # float16, batches 1,4,16: under ~3 min
    python bench/gpu_sweep.py --models sd15,sdxl --sizes 512 --dtypes float16 --batches 1,8 \
        --no-channels-last --no-tiled       # a subset
    python bench/gpu_sweep.py --compile --models flux1 --sizes 1024 --batches 1,8   # torch.compile of the decoder
    python bench/gpu_sweep.py --device cpu --small --quick --out /tmp/sweep.md      # smoke run without a GPU

Each model is diffusers' own ``AutoencoderKL`` built from its full-size config (written
below) with random weights: nothing is downloaded, and a decode costs the same with the
real weights. Each combination gets warm-up calls, then timed ``vae.decode`` calls
(synchronized), and ``torch.cuda.max_memory_allocated`` over the timed calls. cuDNN autotunes
(``torch.backends.cudnn.benchmark``) as the worker has it, unless --no-cudnn-benchmark. The table
goes to stdout and to ``bench/results/gpu-sweep-<date>.md``, the data to the ``.json``
beside it. Needs torch with CUDA and diffusers only (no Redis, no latentq worker).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import itertools
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, VAE_CONFIGS, exit_on_sigterm, fmt, log, markdown_table

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the configs are inline: the hub must never be asked

# --small: tests/tiny_configs.py's shrink of the same classes (same code paths, 8x spatial factor)
SMALL = {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 32}
FULL = {"sizes": "512,1024", "dtypes": "float16,bfloat16", "batches": "1,2,4,8,16", "repeats": 3, "min_time": 0.3}
QUICK = {**FULL, "dtypes": "float16", "batches": "1,4,16", "repeats": 2, "min_time": 0.1}
MAX_CALLS = 50  # timed calls per combination, whatever --min-time asks
MIB = 2**20


class OutOfTime(Exception):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="sd15,sdxl,flux1", help="comma list of sd15, sdxl, flux1 (default: all)")
    p.add_argument("--sizes", help="image side in px, comma list (default 512,1024; --small: 32,64)")
    p.add_argument("--dtypes", help="float16, bfloat16 (default both; --quick: float16; --device cpu: float32)")
    p.add_argument("--batches", help="batch sizes, comma list (default 1,2,4,8,16; --quick: 1,4,16)")
    p.add_argument("--no-channels-last", action="store_true", help="skip the channels_last rows")
    p.add_argument("--no-contiguous", action="store_true", help="skip the contiguous (NCHW) rows")
    p.add_argument("--no-tiled", action="store_true", help="skip the vae.enable_tiling() rows")
    p.add_argument("--no-untiled", action="store_true", help="skip the untiled rows")
    p.add_argument("--tile-px", type=int, help="tile side in px for the tiled rows (default 512; --small: 32); "
                   "0 keeps each config's own (its sample_size: 512 for sd15, 1024 for sdxl and flux1)")  # fmt: skip
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder (dynamic=False): each "
                   "shape compiles in its warm-up call, shown as 'compile s', not in the times")  # fmt: skip
    p.add_argument("--compile-mode", default="default", help="torch.compile mode (default 'default')")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.backends.cudnn.benchmark (default on, as the latentq worker sets it; "
                   "--no-cudnn-benchmark: off)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per combination (default 1, at least 1)")
    p.add_argument("--repeats", type=int, help="at least this many timed calls (default 3; --quick: 2)")
    p.add_argument("--min-time", type=float, help="and at least this many seconds of them, up to "
                   f"{MAX_CALLS} calls (default 0.3; --quick: 0.1)")  # fmt: skip
    p.add_argument("--mem-limit-gib", type=float, help="cap this process's GPU memory (set_per_process_memory_"
                   "fraction), e.g. 24 to see what fits a 24 GB card; past it: OOM rows")  # fmt: skip
    p.add_argument("--max-minutes", type=float, default=0, help="stop starting combinations after this (0: no limit)")
    p.add_argument("--quick", action="store_true", help="the quick preset (see --dtypes, --batches, --repeats)")
    p.add_argument("--small", action="store_true", help="tiny shrunken configs: a smoke run, its numbers mean nothing")
    p.add_argument("--device", default="cuda", help="cuda or cuda:N; cpu only with --small (default cuda)")
    p.add_argument("--out", type=Path, help="markdown file (default bench/results/gpu-sweep-<date>.md); "
                   "the JSON goes beside it with a .json suffix")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key in ("sizes", "dtypes", "batches", "repeats", "min_time"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    if args.small and args.sizes == FULL["sizes"]:
        args.sizes = "32,64"
    if args.tile_px is None:
        args.tile_px = 32 if args.small else 512
    args.models = _split(args.models)
    args.sizes = [int(s) for s in _split(args.sizes)]
    args.dtypes = _split(args.dtypes)
    args.batches = sorted({int(b) for b in _split(args.batches)})  # ascending: an OOM skips the larger ones
    args.formats = [f for f, off in (("contiguous", args.no_contiguous), ("channels_last", args.no_channels_last))
                    if not off]  # fmt: skip
    args.tilings = [t for t, off in ((False, args.no_untiled), (True, args.no_tiled)) if not off]
    for name in args.models:
        if name not in VAE_CONFIGS:
            p.error(f"unknown model {name!r}; known: {', '.join(VAE_CONFIGS)}")
    for name in args.dtypes:
        if name not in ("float16", "bfloat16", "float32"):
            p.error(f"unknown dtype {name!r}")
    if not (args.formats and args.tilings) or args.warmup < 1 or any(s % 8 for s in args.sizes) or args.batches[0] < 1:
        p.error("nothing to run: check --no-*, --warmup >= 1, sizes multiples of 8, batches >= 1")
    return args


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_vae(name: str, small: bool, seed: int, device):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    with device:  # random init on the GPU: seconds instead of ~12 s per model on the CPU
        return AutoencoderKL(**{**VAE_CONFIGS[name], **(SMALL if small else {})}).eval()


def set_tiling(vae, tiled: bool, tile_px: int) -> None:
    vae.use_tiling = tiled
    if tile_px:  # diffusers tiles a latent only when it is larger than one tile (`_decode`)
        vae.tile_sample_min_size = tile_px
        vae.tile_latent_min_size = tile_px // 2 ** (len(vae.config.block_out_channels) - 1)


def tile_count(vae, latent_hw: int) -> int:
    """Tiles diffusers' tiled_decode splits a square latent into (1: it does not tile)."""
    if not vae.use_tiling or latent_hw <= vae.tile_latent_min_size:
        return 1
    step = int(vae.tile_latent_min_size * (1 - vae.tile_overlap_factor))
    return len(range(0, latent_hw, step)) ** 2


def measure(vae, z, args: argparse.Namespace, device) -> dict[str, Any]:
    """Warm-up, then timed decode calls; ms per call and the peak allocated memory over the timed ones."""
    import torch

    cuda = device.type == "cuda"

    def call() -> float:
        if cuda:
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        with torch.inference_mode():
            out = vae.decode(z, return_dict=False)[0]
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        del out
        return seconds * 1000

    first = call()  # includes torch.compile's compilation of this shape, and cuDNN's choices
    for _ in range(args.warmup - 1):
        call()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times: list[float] = []
    while len(times) < args.repeats or (sum(times) < args.min_time * 1000 and len(times) < MAX_CALLS):
        times.append(call())
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    return {"first_call_ms": first, "ms_per_call": statistics.median(times), "ms_per_call_min": min(times),
            "calls": len(times), "peak_bytes": peak}  # fmt: skip


def decode_row(vae, row: dict[str, Any], args: argparse.Namespace, device, memory_format, weights: int) -> None:
    """Measure one combination into ``row``; an OOM or a kernel's error becomes its status instead of a crash."""
    import torch

    hw, dtype = row["px"] // 8, getattr(torch, row["dtype"])
    try:
        z = torch.randn(row["batch"], vae.config.latent_channels, hw, hw, device=device, dtype=dtype)
        row.update(measure(vae, z.contiguous(memory_format=memory_format), args, device))
    except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError):
        row["status"] = "OOM"
    except (RuntimeError, ValueError) as exc:  # e.g. an int32 index limit, a compile error: go on
        row["status"] = f"error: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:80]}"
    z = None
    if row["status"] != "ok":
        gc.collect()  # the failed call's tensors, held by the traceback until now
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return
    peak = row.pop("peak_bytes")
    row["ms_per_image"] = row["ms_per_call"] / row["batch"]
    row["images_per_s"] = 1000 / row["ms_per_image"]
    row["peak_mib"] = peak / MIB if peak is not None else None
    row["peak_minus_weights_mib"] = (peak - weights) / MIB if peak is not None else None


def sweep(args: argparse.Namespace, device, rows: list[dict[str, Any]], notes: list[str]) -> None:
    import torch

    deadline = time.monotonic() + args.max_minutes * 60 if args.max_minutes else None
    for name in args.models:
        started = time.perf_counter()
        vae = build_vae(name, args.small, args.seed, device)
        plain_decoder = vae.decoder
        params = sum(p.numel() for p in vae.parameters())
        log(f"{name}: AutoencoderKL, {params / 1e6:.1f} M parameters, built in {time.perf_counter() - started:.1f} s")
        for dtype_name, layout in itertools.product(args.dtypes, args.formats):
            memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            vae.to(device=device, dtype=getattr(torch, dtype_name), memory_format=memory_format)
            weights = sum(t.numel() * t.element_size() for t in [*vae.parameters(), *vae.buffers()])
            if args.compile:
                torch._dynamo.reset()  # a fresh cache per dtype and layout: guards would recompile anyway
                vae.decoder = torch.compile(plain_decoder, mode=args.compile_mode, dynamic=False)
            for px, tiled in itertools.product(args.sizes, args.tilings):
                set_tiling(vae, tiled, args.tile_px)
                tiles = tile_count(vae, px // 8)
                if tiled and tiles == 1:
                    notes.append(f"{name} at {px} px: no tiled rows, the image fits one {vae.tile_sample_min_size} px "
                                 "tile, so the tiled decode is the untiled one")  # fmt: skip
                    continue
                failed = ""
                for batch in args.batches:
                    if deadline and time.monotonic() > deadline:
                        raise OutOfTime
                    row = {"model": name, "px": px, "dtype": dtype_name, "memory_format": layout, "tiled": tiled,
                           "tiles": tiles, "batch": batch, "compile": args.compile, "params_m": params / 1e6,
                           "weights_mib": weights / MIB, "status": "ok"}  # fmt: skip
                    rows.append(row)
                    if failed:  # a larger batch needs more memory, or hits the same limit
                        row["status"] = f"skipped ({failed} at a smaller batch)"
                        continue
                    decode_row(vae, row, args, device, memory_format, weights)
                    failed = "" if row["status"] == "ok" else row["status"].split(":")[0]
                    label = f"{name} {px}px {dtype_name} {layout} {'tiled' if tiled else 'untiled'} b{batch}"
                    if failed:
                        log(f"{label}: {row['status']}")
                    else:
                        log(f"{label}: {row['ms_per_call']:.1f} ms/call, {row['images_per_s']:.1f} images/s")
        vae.decoder = plain_decoder
        del vae, plain_decoder
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """images/s of each batch over batch 1's, for the same model, size, dtype, layout and tiling."""
    key = ("model", "px", "dtype", "memory_format", "tiled", "compile")
    base = {tuple(r[k] for k in key): r["images_per_s"] for r in rows if r["batch"] == 1 and r["status"] == "ok"}
    for row in rows:
        b1 = base.get(tuple(row[k] for k in key))
        row["speedup_vs_b1"] = row["images_per_s"] / b1 if b1 and row["status"] == "ok" else None


def report(args: argparse.Namespace, meta: dict[str, Any], rows: list[dict[str, Any]], notes: list[str]) -> str:
    def num(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else fmt(value, digits)

    headers = ["px", "dtype", "layout", "tiled", "batch", "ms/call", "ms/image", "images/s", "vs b1",
               "peak MiB", "peak-weights MiB", "compile s" if args.compile else "first call ms", "status"]  # fmt: skip
    out = [f"## latentq VAE decode sweep ({meta['date']}{', --small smoke run: numbers mean nothing' * args.small})",
           "", (f"{meta['device_name']}; torch {meta['torch']} (CUDA {meta['cuda']}, cuDNN {meta['cudnn']}), diffusers "
           f"{meta['diffusers']}, Python {meta['python']}. Random weights; timed `vae.decode` calls after "
           f"{args.warmup} warm-up call(s), at least {args.repeats} and {args.min_time} s of them; medians. "
           f"cudnn.benchmark {args.cudnn_benchmark}, torch.compile {args.compile_mode if args.compile else 'off'}, "
           f"tile {args.tile_px or 'config sample_size'} px. Total run time {meta['run_s']:.0f} s."),
           "", f"Command: `{meta['command']}`", ""]  # fmt: skip
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        out += [f"### {name} (AutoencoderKL, {mine[0]['params_m']:.1f} M parameters)", ""]
        table = []
        for r in mine:
            if args.compile:
                last = num((r["first_call_ms"] - r["ms_per_call"]) / 1000) if "first_call_ms" in r else "-"
            else:
                last = num(r.get("first_call_ms"))
            speed = f"{r['speedup_vs_b1']:.2f}x" if r.get("speedup_vs_b1") else "-"
            table.append([r["px"], r["dtype"], r["memory_format"], f"{r['tiles']} tiles" if r["tiled"] else "no",
                          r["batch"], num(r.get("ms_per_call")), num(r.get("ms_per_image"), 2),
                          num(r.get("images_per_s")), speed, num(r.get("peak_mib"), 0),
                          num(r.get("peak_minus_weights_mib"), 0), last, r["status"]])  # fmt: skip
        out += [markdown_table(headers, table), ""]
    out += ["ms/call: median wall time of one `vae.decode` of the whole batch, synchronized before and after. "
            "ms/image = ms/call / batch; images/s = 1000 / ms/image; vs b1: images/s over batch 1's of the same row "
            "kind. peak MiB: `torch.cuda.max_memory_allocated` over the timed calls (reset after the warm-up), which "
            "counts the weights, the latents and the decoded images; peak-weights MiB subtracts the weights' bytes. "
            + ("compile s: the first call's time minus a timed call's, i.e. torch.compile's compilation of that "
               "shape. " if args.compile else "first call ms: the first (warm-up) call. ")
            + "Tiled rows: `vae.enable_tiling()` with a tile of --tile-px pixels and diffusers' 25% overlap; "
            "the tiles column counts the decoder calls per image."]  # fmt: skip
    out += [""] + [f"- {note}" for note in dict.fromkeys(notes)]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    run_started = time.perf_counter()
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_sweep.py needs a CUDA GPU, and torch.cuda.is_available() is False here (torch {torch.__version__})."
              " For a smoke run of the script: --device cpu --small.", file=sys.stderr)  # fmt: skip
        return 2
    if device.type != "cuda" and not args.small:
        print("gpu_sweep.py measures a GPU; --device cpu is only for a smoke run with --small.", file=sys.stderr)
        return 2
    notes: list[str] = []
    if device.type == "cpu":
        args.dtypes = ["float32"]  # CPU half-precision convs are slow or missing: the smoke run checks code paths
        torch.set_num_threads(1)  # and stays off the other cores (and out of spin-waits on a busy machine)
        notes.append("--device cpu: float32 only, one thread")
    if device.type == "cuda":
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
        if args.mem_limit_gib:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, args.mem_limit_gib * 2**30 / total), device)
    if args.compile:
        torch._dynamo.config.cache_size_limit = 256  # one graph per shape; past the limit dynamo runs eager
    if "sdxl" in args.models and "float16" in args.dtypes:
        notes.append("sdxl in float16: the real stabilityai/sdxl-vae overflows in fp16 (force_upcast); with random "
                     "weights only the time matters, which equals the fp16-fix VAE's (same architecture)")  # fmt: skip
    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # .to(dtype) warns about an empty keep-in-fp32 list each time

    command = shlex.join([sys.executable.rsplit("/", 1)[-1], "bench/gpu_sweep.py",
                          *(sys.argv[1:] if argv is None else argv)])  # fmt: skip
    meta = {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "command": command, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "python": platform.python_version(), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "host": platform.node(),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "settings": {k: v for k, v in vars(args).items() if k != "out"}}  # fmt: skip
    rows: list[dict[str, Any]] = []
    status = 0
    try:
        sweep(args, device, rows, notes)
    except OutOfTime:
        notes.append(f"--max-minutes {args.max_minutes} reached: the combinations after the last row were not run")
    except (KeyboardInterrupt, SystemExit):  # SIGTERM included: keep what was measured
        notes.append("interrupted: the combinations after the last row were not run")
        status = 130
    for row in rows:
        if row["status"] == "ok" and "ms_per_call" not in row:  # the one an interruption stopped
            row["status"] = "interrupted"
    add_speedups(rows)
    meta["run_s"] = time.perf_counter() - run_started
    text = report(args, meta, rows, notes)
    print(text)
    suffix = "-small" * args.small + "-quick" * args.quick
    out = args.out or RESULTS_DIR / f"gpu-sweep-{dt.date.today().isoformat()}{suffix}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps({"meta": meta, "rows": rows, "notes": list(dict.fromkeys(notes))}, indent=1))
    log(f"wrote {out} and {json_path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
