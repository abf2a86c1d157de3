r"""latentq at the decode limit: the bare decode (L), the user's loop (A) and latentq (Q), side by side.

    python bench/gpu.py                        # SD 1.5, SDXL, FLUX.1, Wan 2.1 on one GPU: at most 8 minutes
    python bench/gpu.py --compile              # the same with torch.compile on both sides (L and the worker)
    python bench/gpu.py --models sd15,sdxl --minutes 4
    python bench/gpu.py --device cpu --small   # smoke run without a GPU (tiny configs): its numbers mean nothing

For each model (real VAE configs, random weights: nothing is downloaded, a decode costs the same):
  L  the bare batched ``vae.decode``, latents already on the device: the best of a small grid
     (dtype x batch x channels_last, plus torch.compile of the best one with --compile): the limit;
  A  the loop a user writes: one latent at a time, decode, to uint8, copy back, encode (PNG
     compress_level=1 / JPEG quality 90 / MP4 as latentq does), write the file;
  Q  latentq, one worker (``latentq worker``, every model loaded), end to end: ``Client.submit_many`` of
     latents from the CPU, through Redis, decoded, encoded, stored, marked finished.
Q/L >= 0.9 and Q/A >= 2.5 (SD 1.5) are issue 15's targets. The worker is started first and loads its
models while the in-process rows run; its GPU memory is its own ``torch.cuda.max_memory_allocated``
(every model resident), from its stats in Redis, and nvidia-smi's figure for its process.

Each model gets a share of ``--minutes`` (printed as it goes, elapsed per section); a grid cut short by
its share says so. The table goes to stdout and bench/results/gpu-<date>.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import io
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, VAE_CONFIGS, BenchStack, exit_on_sigterm, fmt, log, markdown_table, wait_registries

MIB = 2**20
# --small: tests/tiny_configs.py's shrink of the same classes (the same code paths).
SMALL_KL = {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 32}
SMALL_WAN = {"base_dim": 8, "num_res_blocks": 1}


@dataclass
class Case:
    model: str  # the registry's name
    label: str
    fmt: str  # output_format
    latent: tuple[int, ...]  # one job's latent: (C, h, w) or (C, f, h, w)
    small_latent: tuple[int, ...]
    dtype: str  # the worker's (the models file's) on a GPU
    weight: float  # share of the time budget
    frames: int = 1  # frames per output (video)
    small_frames: int = 1

    @property
    def video(self) -> bool:
        return len(self.latent) == 4


CASES = {
    "sd15": Case("sd15", "SD 1.5 512x512 PNG", "png", (4, 64, 64), (4, 8, 8), "float16", 1.0),
    "sdxl": Case("sdxl", "SDXL 1024x1024 JPEG", "jpeg", (4, 128, 128), (4, 16, 16), "float16", 1.2),
    "flux1": Case("flux1", "FLUX.1 1024x1024 JPEG", "jpeg", (16, 128, 128), (16, 16, 16), "bfloat16", 1.2),
    # 17 frames of 480x832: the latent's 5 frames decode to 1 + 4 x 4.
    "wan": Case("wan", "Wan 2.1 480x832 x17 frames MP4", "mp4", (16, 5, 60, 104), (16, 2, 4, 4), "bfloat16", 1.3,
                frames=17, small_frames=5),
}  # fmt: skip


@dataclass
class Row:
    kind: str  # L, A or Q
    setting: str
    rate: float  # outputs (images or frames) per second
    peak_mib: float | None = None
    note: str = ""


@dataclass
class Result:
    case: Case
    rows: dict[str, Row] = field(default_factory=dict)
    grid: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- helpers
def worker_options() -> dict[str, argparse.Action]:
    """The options ``latentq worker`` takes, by flag (--compile and --channels-last: where this version has them)."""
    from latentq.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {opt: action for action in sub.choices["worker"]._actions for opt in action.option_strings}


def config_of(case: Case, small: bool) -> dict[str, Any]:
    config = dict(VAE_CONFIGS[case.model])
    if small:
        config.update(SMALL_WAN if case.video else SMALL_KL)
    return config


def build_module(case: Case, small: bool, device, dtype, seed: int):
    """The diffusers VAE of the case, random weights, initialised on ``device`` (seconds, not minutes)."""
    import diffusers
    import torch

    from latentq.models.registry import load_registry

    cls = getattr(diffusers, load_registry(None).get(case.model).diffusers_class)
    torch.manual_seed(seed)
    with device:
        module = cls(**config_of(case, small))
    return module.to(dtype=dtype).eval().requires_grad_(False)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def peak_mib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


# --------------------------------------------------------------------------------------------- L: the limit
def time_decode(module, z, device, min_time: float, max_calls: int = 30) -> tuple[float, float | None]:
    """Median ms of one ``decode(z)`` call after two warm-ups, and the peak memory over the timed calls."""
    import torch

    def call() -> float:
        sync(device)
        started = time.perf_counter()
        with torch.inference_mode():
            module.decode(z, return_dict=False)
        sync(device)
        return (time.perf_counter() - started) * 1000

    call(), call()
    reset_peak(device)
    times: list[float] = []
    while len(times) < 3 or (sum(times) < min_time * 1000 and len(times) < max_calls):
        times.append(call())
    return statistics.median(times), peak_mib(device)


def limit_grid(case: Case, result: Result, args, device, deadline: float) -> Row:
    """L: the bare decode over dtype x batch x channels_last (x compile of the best), until ``deadline``."""
    import torch

    on_gpu = device.type == "cuda"
    dtypes = ["float16", "bfloat16"] if on_gpu else ["float32"]
    batches = args.batches if not case.video else [1, 2]
    layouts = [False, True] if not case.video else [False]  # channels_last is a 4-D layout
    latent = case.small_latent if args.small else case.latent
    frames = (case.small_frames if args.small else case.frames) if case.video else 1
    cut = False
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        module = build_module(case, args.small, device, dtype, args.seed)
        for channels_last in layouts:
            module = module.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            for batch in batches:
                if time.monotonic() > deadline:
                    cut = True
                    break
                row = {"dtype": dtype_name, "batch": batch, "channels_last": channels_last, "compile": False}
                try:
                    z = torch.randn(batch, *latent, device=device, dtype=dtype)
                    if channels_last:
                        z = z.contiguous(memory_format=torch.channels_last)
                    ms, peak = time_decode(module, z, device, args.min_time)
                    row.update(ms=ms, rate=batch * frames * 1000 / ms, peak_mib=peak)
                except (RuntimeError, ValueError) as exc:
                    row.update(ms=math.nan, rate=math.nan, peak_mib=None, error=str(exc).splitlines()[0][:80])
                    if out_of_memory(exc):
                        free(device)
                result.grid.append(row)
        del module
        free(device)
    ok = [r for r in result.grid if r["rate"] == r["rate"]]
    if not ok:
        raise RuntimeError(f"{case.model}: no decode setting ran ({result.grid[-1].get('error', 'no time')})")
    best = max(ok, key=lambda r: r["rate"])
    if args.compile and time.monotonic() < deadline:
        dtype = getattr(torch, best["dtype"])
        module = build_module(case, args.small, device, dtype, args.seed)
        if best["channels_last"]:
            module = module.to(memory_format=torch.channels_last)
        module.decoder = torch.compile(module.decoder)
        z = torch.randn(best["batch"], *latent, device=device, dtype=dtype)
        if best["channels_last"]:
            z = z.contiguous(memory_format=torch.channels_last)
        started = time.perf_counter()
        ms, peak = time_decode(module, z, device, args.min_time)
        row = {**best, "compile": True, "ms": ms, "rate": best["batch"] * frames * 1000 / ms, "peak_mib": peak,
               "compile_s": time.perf_counter() - started}  # fmt: skip
        result.grid.append(row)
        best = max(best, row, key=lambda r: r["rate"])
        del module
        free(device)
    tried = sum(1 for r in result.grid if r["rate"] == r["rate"])
    note = f"best of {tried} settings" + (" (grid cut short by the time budget)" if cut else "")
    return Row("L", setting(best), best["rate"], best["peak_mib"], note)


def setting(row: dict[str, Any]) -> str:
    parts = [row["dtype"], f"batch {row['batch']}"]
    if row.get("channels_last"):
        parts.append("channels_last")
    if row.get("compile"):
        parts.append("compiled")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------- A: the user's loop
def encode(pixels, case: Case) -> bytes:
    """(H, W, 3) or (F, H, W, 3) uint8 on the CPU -> the file's bytes, with latentq's settings."""
    from PIL import Image

    if case.video:
        from latentq.worker.encode import encode_mp4

        return encode_mp4(pixels, fps=16, quality=90)
    buffer = io.BytesIO()
    image = Image.fromarray(pixels.numpy())
    if case.fmt == "png":
        image.save(buffer, format="PNG", compress_level=1)
    else:
        image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def user_loop(case: Case, args, device, out_dir: Path, deadline: float) -> Row:
    """A: one latent at a time (on the device, as a pipeline leaves it): decode, to uint8, copy back, encode, write."""
    import torch

    dtype = getattr(torch, case.dtype if device.type == "cuda" else "float32")
    module = build_module(case, args.small, device, dtype, args.seed)
    latent = case.small_latent if args.small else case.latent
    frames = (case.small_frames if args.small else case.frames) if case.video else 1
    out_dir.mkdir(parents=True, exist_ok=True)
    z = torch.randn(1, *latent, device=device, dtype=dtype)

    def one(vae, index: int) -> None:
        with torch.inference_mode():
            out = vae.decode(z, return_dict=False)[0]
        pixels = ((out.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        pixels = pixels[0].permute(1, 2, 3, 0) if case.video else pixels[0].permute(1, 2, 0)
        (out_dir / f"{index:05d}.{case.fmt}").write_bytes(encode(pixels.contiguous(), case))

    one(module, 0)  # warm-up
    reset_peak(device)
    count, started = 0, time.perf_counter()
    while count < args.min_items or (time.monotonic() < deadline and count < args.max_items):
        one(module, count)
        count += 1
    seconds = time.perf_counter() - started
    peak = peak_mib(device)
    del module
    free(device)
    return Row("A", f"{dtype_name(dtype)}, 1 at a time, eager", count * frames / seconds, peak, f"{count} outputs")


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------------------------- Q: latentq
def nvidia_smi_process_mib(pid: int) -> float | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout  # fmt: skip
    except (subprocess.SubprocessError, OSError):
        return None
    for line in out.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) == 2 and cells[0] == str(pid) and cells[1].replace(".", "").isdigit():
            return float(cells[1])
    return None


class ProcessMemory:
    """nvidia-smi's memory of one process, sampled in a thread while a row runs (its peak)."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval, self.peak = pid, interval, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            value = nvidia_smi_process_mib(self.pid)
            if value is not None:
                self.peak = max(self.peak or 0.0, value)
            self._stop.wait(self.interval)

    def __enter__(self) -> ProcessMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def start_worker(stack: BenchStack, args, device, options: dict[str, argparse.Action]):
    """One worker serving every model (each in its models-file dtype); returns it and its flags, as text."""
    flags = []
    channels_last = options.get("--channels-last")
    if device.type == "cuda" and channels_last is not None:  # a switch, or --channels-last {auto,on,off}
        flags += ["--channels-last", "on"] if channels_last.choices else ["--channels-last"]
    if args.compile and "--compile" in options:
        flags.append("--compile")
    extra = ["--no-previews", *flags]
    for name in args.models[1:]:
        extra += ["--model", name]
    batch = max(args.batches)
    worker = stack.spawn_worker("gpu-bench", model=args.models[0], device=str(device), max_batch=batch,
                                max_wait_ms=args.max_wait_ms, extra=extra)  # fmt: skip
    return worker, " ".join([f"--max-batch {batch}", *flags])


def through_latentq(case: Case, stack: BenchStack, worker, args, limit: Row, deadline: float) -> Row:
    """Q: ``submit_many`` of N latents, timed from the first submit to the last job finished (worker warm)."""
    import torch

    from latentq.state import keys

    latent = case.small_latent if args.small else case.latent
    frames = (case.small_frames if args.small else case.frames) if case.video else 1
    batch = 2 if case.video else max(args.batches)
    client = stack.client()
    queue = keys.queue_name(case.model)
    warm = torch.randn(batch, *latent)
    for job in client.submit_many(warm, model=case.model, output_format=case.fmt):  # warm-up: a full batch
        job.wait(timeout=max(60.0, deadline - time.monotonic() + 60))
    seconds = max(2.0, deadline - time.monotonic())
    expected = limit.rate / frames * 0.8  # outputs/s; Q is at most L
    count = int(min(args.max_items, max(2 * batch, 0.5 * expected * seconds)))  # half the share: Q may be slower
    count = max(batch, count - count % batch)
    latents = torch.randn(count, *latent)
    done_before = stack.conn.zcard(f"rq:finished:{queue}")
    started = time.perf_counter()
    with ProcessMemory(worker.pid) as smi:
        jobs = client.submit_many(latents, model=case.model, output_format=case.fmt)
        ended = wait_registries(stack.conn, queue, done_before + count, timeout=max(60.0, 4 * seconds),
                                processes=stack.workers)  # fmt: skip
    elapsed = ended - started
    statuses = {job.status().value for job in jobs[-batch:]}
    client.close()
    if statuses != {"finished"}:
        raise RuntimeError(f"{case.model}: jobs ended {statuses}")
    stats = stack.worker_stats(worker.name)
    worker_peak = stats.get("gpu_peak_allocated")
    peak = worker_peak / MIB if worker_peak else smi.peak
    note = f"{count} jobs"
    if worker_peak:
        note += "; peak: the worker's max_memory_allocated, every model resident"
        if smi.peak:
            note += f" (nvidia-smi: {smi.peak:.0f} MiB)"
    elif smi.peak:
        note += "; peak: nvidia-smi, the worker process"
    return Row("Q", "", count * frames / elapsed, peak, note)


# --------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (cpu: a smoke run, with --small)")
    parser.add_argument("--models", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--minutes", type=float, default=8.0, help="the whole run's budget (default 8)")
    parser.add_argument("--compile", action="store_true",
                        help="also torch.compile: the best L setting, and the worker (when it has --compile)")
    parser.add_argument("--small", action="store_true",
                        help="tiny configs and latents (a smoke run of this script, on a CPU too)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the worker's --max-wait-ms (default 5)")
    parser.add_argument("--redis-url", help="a disposable Redis database (it is emptied) instead of a private one")
    parser.add_argument("--out", type=Path, help="markdown output (default bench/results/gpu-<date>.md)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in CASES]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    args.batches = [1, 4] if args.small else [1, 4, 8]
    args.min_time = 0.05 if args.small else 0.4  # seconds of timed calls per L setting
    args.min_items = 3 if args.small else 8  # outputs of the A loop, whatever the budget says
    args.max_items = 8 if args.small else 512
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    run_started = time.monotonic()
    run_deadline = run_started + args.minutes * 60
    import torch

    from latentq.models.registry import ModelSpec

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print(f"bench/gpu.py needs a CUDA GPU; torch.cuda.is_available() is False (torch {torch.__version__}). "
                  "Without one: --device cpu --small (a smoke run).", file=sys.stderr)  # fmt: skip
            return 2
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.backends.cudnn.benchmark = True  # as the worker sets it: cuDNN picks each shape's fastest kernels
    elif not args.small:
        print("bench/gpu.py measures a GPU; --device cpu is only for a smoke run with --small.", file=sys.stderr)
        return 2
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    options = worker_options()
    cases = [CASES[name] for name in args.models]
    models_file = {c.model: {"config": config_of(c, args.small), "seed": args.seed,
                             "dtype": c.dtype if device.type == "cuda" else "float32"} for c in cases}  # fmt: skip
    if args.compile and "warmup_shapes" in {f.name for f in dataclasses.fields(ModelSpec)}:
        for case in cases:  # the worker compiles these at start, not on the first jobs
            latent = list(case.small_latent if args.small else case.latent)
            batch = 2 if case.video else max(args.batches)
            models_file[case.model]["warmup_shapes"] = [[batch, *latent], [1, *latent]]
    results: list[Result] = []
    with BenchStack(models_file, extra_env={"HF_HUB_OFFLINE": "1"}, redis_url=args.redis_url) as stack, \
            tempfile.TemporaryDirectory(prefix="latentq-gpu-") as scratch:  # fmt: skip
        stack.new_scenario()
        worker, worker_flags = start_worker(stack, args, device, options)  # loads while L and A run
        log(f"worker started ({worker_flags}); {len(cases)} model(s), {args.minutes:g} min budget")
        reserve = 20.0 if not args.small else 5.0  # the report, the worker's stop
        for index, case in enumerate(cases):
            result = Result(case)
            results.append(result)
            now = time.monotonic()
            left = run_deadline - reserve - now
            share = left * case.weight / sum(c.weight for c in cases[index:])
            log(f"== {case.label}: {share:.0f} s of the budget (run elapsed {now - run_started:.0f} s)")
            section = time.monotonic()
            result.rows["L"] = limit_grid(case, result, args, device, now + 0.4 * share)
            result.seconds["L"] = time.monotonic() - section
            log(f"   L {result.rows['L'].setting}: {result.rows['L'].rate:.1f}/s ({result.seconds['L']:.0f} s)")
            section = time.monotonic()
            result.rows["A"] = user_loop(case, args, device, Path(scratch) / case.model, now + 0.6 * share)
            result.seconds["A"] = time.monotonic() - section
            log(f"   A: {result.rows['A'].rate:.1f}/s ({result.seconds['A']:.0f} s)")
            section = time.monotonic()
            waited = stack.wait_for_workers(1, model=case.model, timeout=max(60.0, run_deadline - time.monotonic()))
            if waited > 0.5:
                log(f"   waited {waited:.0f} s for the worker to load its models")
            result.rows["Q"] = through_latentq(case, stack, worker, args, result.rows["L"], now + share)
            result.rows["Q"].setting = f"1 worker, {case.dtype if device.type == 'cuda' else 'float32'}, {worker_flags}"
            result.seconds["Q"] = time.monotonic() - section
            log(f"   Q: {result.rows['Q'].rate:.1f}/s ({result.seconds['Q']:.0f} s)")
        stack.stop_workers()
    report = render(results, args, argv, device_name, time.monotonic() - run_started)
    print(report)
    stamp = dt.date.today().isoformat()
    out = args.out or RESULTS_DIR / f"gpu-{stamp}{'-small' if args.small else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    log(f"wrote {out}")
    return 0


def render(results: list[Result], args, argv, device_name: str, seconds: float) -> str:
    import torch

    rows = []
    for result in results:
        case, (limit, user, queued) = result.case, (result.rows[k] for k in "LAQ")
        unit = "frames/s" if case.video else "images/s"
        for row in (limit, user, queued):
            ratios = ["", ""]
            if row.kind == "Q":
                ratios = [f"{row.rate / limit.rate:.2f}", f"{row.rate / user.rate:.2f}"]
            rows.append([case.label, row.kind, row.setting, f"{fmt(row.rate, 1)} {unit}",
                         "n/a" if row.peak_mib is None else f"{row.peak_mib:.0f}", *ratios,
                         f"{result.seconds[row.kind]:.0f}", row.note])  # fmt: skip
    targets = []
    for result in results:
        limit, user, queued = (result.rows[k] for k in "LAQ")
        if result.case.model in ("sd15", "sdxl"):
            targets.append([result.case.label, "Q/L >= 0.9", f"{queued.rate / limit.rate:.2f}",
                            "yes" if queued.rate >= 0.9 * limit.rate else "**no**"])  # fmt: skip
        if result.case.model == "sd15":
            targets.append([result.case.label, "Q/A >= 2.5", f"{queued.rate / user.rate:.2f}",
                            "yes" if queued.rate >= 2.5 * user.rate else "**no**"])  # fmt: skip
    grid = []
    for result in results:
        for row in result.grid:
            grid.append([result.case.model, row["dtype"], row["batch"], "yes" if row["channels_last"] else "",
                         "yes" if row["compile"] else "", fmt(row["ms"], 1), fmt(row["rate"], 1),
                         "n/a" if row.get("peak_mib") is None else f"{row['peak_mib']:.0f}",
                         row.get("error", "")])  # fmt: skip
    command = "python bench/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    small = ", --small smoke run: tiny configs, the numbers mean nothing" if args.small else ""
    return (
        f"## latentq: bare decode (L), the user's loop (A), latentq (Q) ({dt.datetime.now():%Y-%m-%d %H:%M}{small})\n\n"
        f"{device_name}, torch {torch.__version__}. Command: `{command.strip()}`. Whole run {seconds:.0f} s "
        f"(budget {args.minutes:g} min).\n\n"
        + markdown_table(["model", "row", "setting", "rate", "peak GPU MiB", "Q/L", "Q/A", "s", "note"], rows)
        + "\n\n" + markdown_table(["model", "target", "measured", "met"], targets)
        + "\n\nL's grid (one decode call each: median ms, outputs/s, max_memory_allocated over the timed calls):\n\n"
        + markdown_table(["model", "dtype", "batch", "channels_last", "compiled", "ms/call", "rate", "peak MiB",
                          "error"], grid)  # fmt: skip
        + "\n\nL and A run in this process (peak: torch.cuda.max_memory_allocated, the model's weights included); "
        "Q's rate is from the first submit to the last job finished, the worker warm (one batch decoded first).\n"
    )


if __name__ == "__main__":
    sys.exit(main())
