"""latentq on the CPU with TAEF2's real weights, side by side with what a user does instead.

    .venv/bin/python bench/bench_cpu.py --quick     # smoke run, about 1.5 minutes
    .venv/bin/python bench/bench_cpu.py             # the full run, about 4 minutes on 2 quiet cores

Rows (see bench/README.md); throughput rows report images/s, p50/p99 latency (submit to result) and
the ratio to the in-process loop:
  a   in-process loop: load once; per latent decode + to_uint8 + PNG (compress_level=1) + write, sequentially
  p   plain RQ as set up in an afternoon: one Queue.enqueue per latent, a stock SimpleWorker, the model in a
      module global, the job writes the PNG (bench/plain_rq_job.py)
  b   latentq, 1 worker (--max-batch 8): N latents through Client.submit_many, wait for all
  a2  the in-process loop again right after p and b: ratios are against the mean of a and a2 (and a alone)
  t   the in-process loop tuned as the worker loads its model on the CPU (channels_last): b against t is
      the queue's own cost at equal decode settings (runs with b)
  b1  latentq, 1 worker, --max-batch 1 (batching off; runs with b, --no-batch1 drops it)
  c   latentq, 2 workers (--max-batch 8)
  c1  latentq, 2 workers, --max-batch 1 (runs with c, --no-batch1 drops it)
  d   dispatch rate of tiny jobs: latentq (1 worker) vs a stock RQ SimpleWorker running decode_job, and
      the queue's own cost per job in ms (span / jobs - mean decode per job)
  e   per-job queue overhead at light load, one job at a time (--max-wait-ms 0 and the default 5)
  f   memory flatness over 2,000 tiny jobs: Redis used_memory and the worker's RSS

--only takes row letters: a p b c d e f (a always runs; b includes b1 and t, c includes c1; a2 runs with p, b or c).
Writes bench/results/cpu-<date>[-quick].md (printed too), the same numbers as .json, and a .png plot
(throughput by system, batch size and worker count; latency; dispatch) when matplotlib is installed
(pip install -e '.[bench]').
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import (
    DEFAULT_TAEF2,
    RESULTS_DIR,
    BenchStack,
    ForeignCPU,
    Stopwatch,
    default_work_dir,
    exit_on_sigterm,
    load_average,
    log,
    machine_summary,
    taef2_models,
    usable_cpus,
)
from cpu_rows import (
    CHANNELS,
    Guard,
    dispatch,
    in_process_loop,
    latentq_throughput,
    light_load_latency,
    load_in_process,
    memory_run,
    per_decode_ms,
    plain_rq_throughput,
)
from report import render_markdown, to_json, write_plot

from latentq.config import Settings
from latentq.worker.defaults import BATCH_DEFAULTS


def median_round(rounds: list[dict], key: str) -> dict:
    """The round with the median ``key``, with every round's value beside it (``rounds``)."""
    ordered = sorted(rounds, key=lambda r: r[key])
    return {**ordered[(len(ordered) - 1) // 2], "rounds": [r[key] for r in rounds]}


def median_rounds(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Each row's median round by images/s, with every round's rate beside it."""
    return {row: median_round(rounds, "images_per_s") for row, rounds in results.items()}


def batch_size(max_batch: int | None, hw: int) -> int:
    """Jobs per decode call for latents of hw x hw: the flag, or what the worker's CPU defaults give."""
    if max_batch is not None:
        return max_batch
    cpu = BATCH_DEFAULTS["cpu"]
    return max(1, min(cpu["max_batch"], cpu["max_batch_pixels"] // (8 * hw) ** 2))


def batch_text(max_batch: int | None, hw: int) -> str:
    return str(max_batch) if max_batch is not None else f"{batch_size(None, hw)}, worker default"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shrink everything for a smoke run (about 90 s)")
    parser.add_argument("--latent-hw", type=int, default=16, help="latent height = width for the throughput rows "
                        "(default 16: 32x16x16 -> 128x128 px)")  # fmt: skip
    parser.add_argument("--images", type=int, default=64, help="latents per throughput row (default 64)")
    parser.add_argument("--rounds", type=int, default=None, help="runs of the throughput rows and of row e, "
                        "interleaved; each row reports its median round (default 3, --quick 1)")  # fmt: skip
    parser.add_argument("--max-batch", type=int, default=None, help="workers' --max-batch (rows b, c, d, e, f; "
                        "default: the worker's own CPU defaults, max-batch 32 within 32,768 output pixels per "
                        "decode call)")  # fmt: skip
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="workers' --max-wait-ms (default 5, "
                        "latentq's default)")  # fmt: skip
    parser.add_argument("--tiny-jobs", type=int, default=600, help="jobs in the dispatch row d (default 600)")
    parser.add_argument("--tiny-format", default="png", choices=["png", "uint8"],
                        help="output format of the tiny jobs (d, e, f; default png)")  # fmt: skip
    parser.add_argument("--latency-jobs", type=int, default=150, help="sequential jobs per config in row e "
                        "(default 150)")  # fmt: skip
    parser.add_argument("--memory-jobs", type=int, default=2000, help="jobs in row f (default 2000)")
    parser.add_argument("--memory-first", type=int, default=200, help="first sample after this many (default 200)")
    parser.add_argument("--record-ttl", type=int, default=Settings().record_ttl,
                        help="LATENTQ_RECORD_TTL of row f: seconds Redis keeps a finished job's record; each memory "
                        f"sample waits for it to pass (default {Settings().record_ttl}, latentq's default)")  # fmt: skip
    parser.add_argument("--no-batch1", "--no-diagnostics", dest="no_batch1", action="store_true",
                        help="skip the max-batch 1 rows b1 and c1")  # fmt: skip
    parser.add_argument("--only", default="apbcdef", help="rows to run, e.g. 'pb' or 'def' (default apbcdef; a "
                        "always runs; b includes b1, c includes c1)")  # fmt: skip
    parser.add_argument("--taef2", type=Path, default=DEFAULT_TAEF2,
                        help=f"TAEF2 weights dir (default {DEFAULT_TAEF2})")  # fmt: skip
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the latentq workers only (repeat), e.g. OMP_WAIT_POLICY=PASSIVE",
    )
    parser.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the latentq workers (repeat), e.g. --worker-arg=--encode-threads=1",
    )
    parser.add_argument("--worker-log-level", default=None, help="workers' --log-level (default: latentq's, INFO)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on a row after this many seconds")
    parser.add_argument("--out", type=Path, help="markdown output (default bench/results/cpu-<date>[-quick].md); "
                        "the JSON and the plot go next to it (.json, .png)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=default_work_dir(), help="where every system writes its output "
                        f"files (default {default_work_dir() or 'the system temp dir'}: RAM-backed when "
                        "available, so disk stalls add no row-to-row noise)")  # fmt: skip
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="before each row, wait up to this many s "
                        "for other processes to go quiet (0: never wait; default 30)")  # fmt: skip
    parser.add_argument("--retries", type=int, default=2, help="rerun a row disturbed by other processes "
                        "(>= 0.10 cores meanwhile) up to this many times, keeping the least disturbed "
                        "(default 2)")  # fmt: skip
    args = parser.parse_args(argv)
    unknown = set(args.only) - set("apbcdef")
    if unknown:
        parser.error(f"--only takes row letters from 'apbcdef', not {''.join(sorted(unknown))!r}")
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.quick:
        args.images = min(args.images, 16)
        args.tiny_jobs = min(args.tiny_jobs, 200)
        args.latency_jobs = min(args.latency_jobs, 30)
        args.memory_jobs = min(args.memory_jobs, 300)
        args.memory_first = min(args.memory_first, 50)
        args.record_ttl = min(args.record_ttl, 2)
        args.quiet_wait = min(args.quiet_wait, 3.0)
        args.retries = 0
    try:
        args.worker_env = dict(item.split("=", 1) for item in args.worker_env)
    except ValueError:
        parser.error("--worker-env takes KEY=VALUE")
    if args.memory_first >= args.memory_jobs:
        parser.error("--memory-first must be below --memory-jobs")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    torch.manual_seed(args.seed)
    run_started = time.perf_counter()
    hw = args.latent_hw
    rows_wanted = set(args.only) | {"a"}
    models = taef2_models(args.taef2)
    guard = Guard(args)
    whole_run = ForeignCPU()
    out = args.out or RESULTS_DIR / f"cpu-{dt.date.today().isoformat()}{'-quick' if args.quick else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    json_out, plot_out = out.with_suffix(".json"), out.with_suffix(".png")
    data: dict = {
        "meta": {"quick": args.quick, "machine": machine_summary(), "cpus": usable_cpus(), "taef2": str(args.taef2), "work_dir": args.work_dir,
                 "load_at_start": load_average(), "channels": CHANNELS, "latent_hw": hw, "images": args.images,
                 "rounds": args.rounds,
                 "max_batch": batch_text(args.max_batch, hw), "max_batch_tiny": batch_text(args.max_batch, 1),
                 "max_wait_ms": args.max_wait_ms, "tiny_format": args.tiny_format,
                 "latency_jobs": args.latency_jobs, "memory_jobs": args.memory_jobs,
                 "memory_first": args.memory_first, "only": "".join(sorted(rows_wanted)),
                 "command": f"python bench/bench_cpu.py {' '.join(argv if argv is not None else sys.argv[1:])}",
                 "json": str(json_out), "plot": None},
        "throughput": {}, "dispatch": None, "light_load": [], "memory": [], "load": guard.load, "retried": [],
        "errors": [],
    }  # fmt: skip

    def write(final: bool) -> str:
        meta = data["meta"]
        total_s = time.perf_counter() - run_started
        foreign = whole_run.seconds()
        meta.update(stamp=dt.datetime.now().strftime("%Y-%m-%d %H:%M"), run_s=total_s, foreign_cpu_s=foreign,
                    foreign_cores=foreign / total_s, load_at_end=load_average())  # fmt: skip
        data["retried"] = guard.retried()
        if final:
            message = write_plot(data, plot_out)
            log(message)
            meta["plot"] = str(plot_out) if message.startswith("wrote") else None
            meta["plot_note"] = message
        text = render_markdown(data, final)
        if final and meta["plot"] is None:
            text += f"\n{meta['plot_note']}\n"
        out.write_text(text)
        json_out.write_text(to_json(data))
        return text

    def attempt(rows: str, fn) -> None:
        """Run one section; an error fails that section only. The report so far is written after each."""
        try:
            fn()
        except Exception as exc:
            log(f"rows {rows} failed:\n{traceback.format_exc()}")
            data["errors"].append((rows, f"{type(exc).__name__}: {exc}"))
            stack.stop_workers()
        write(final=False)

    stack = BenchStack(models, worker_env=args.worker_env, worker_args=args.worker_arg, work_dir=args.work_dir)
    with stack, tempfile.TemporaryDirectory(prefix="latentq-inproc-", dir=args.work_dir) as scratch:
        # ---- per-decode time and row a
        log(f"loading TAEF2 in-process from {args.taef2}")
        with Stopwatch() as load_sw:
            model = load_in_process(stack.models_file)
        tuned_model = load_in_process(stack.models_file, tuned=True) if "b" in rows_wanted else None
        latents = torch.randn(args.images, CHANNELS, hw, hw)
        tput = data["throughput"]
        rows = tput.setdefault("rows", {})

        results: dict[str, list[dict]] = {}  # row -> one result per round

        def row_a() -> None:
            batch = batch_size(args.max_batch, hw)
            single, batched = per_decode_ms(model, hw, batch, repeats=3 if args.quick else 7)
            log(f"one decode of 1x{CHANNELS}x{hw}x{hw}: {single:.1f} ms; in a batch of {batch}: "
                f"{batched:.1f} ms per image")  # fmt: skip
            tput.update(single_decode_ms=single, batched_decode_ms=batched, model_load_ms=load_sw.seconds * 1000)
            tiny_ms = per_decode_ms(model, 1, batch_size(args.max_batch, 1), repeats=5)
            tiny.update(tiny_single_ms=tiny_ms[0], tiny_batched_ms=tiny_ms[1])

        tiny: dict[str, float] = {}
        guard.run("a-setup", row_a)

        # a, p, b, a2, t, b1, c, c1: the in-process loop brackets rows p and b, since the machine drifts, and the
        # whole sequence runs --rounds times; each row reports its median round. Each row is its own section:
        # one that fails (say plain RQ) does not take the others with it.
        def keep(row: str, result: dict) -> None:
            results.setdefault(row, []).append(result)
            rows.update(median_rounds(results))

        def queue_row(row: str, what: str, fn, *fn_args) -> None:
            log(f"row {row}: {what}")
            attempt(row, lambda: keep(row, guard.run(row, fn, stack, latents, *fn_args)))

        def in_process_row(row: str, loaded=None) -> None:
            log(f"row {row}: in-process loop over {args.images} latents")
            keep(row, guard.run(row, in_process_loop, loaded or model, latents, Path(scratch) / row))

        for round_index in range(args.rounds):
            log(f"throughput round {round_index + 1} of {args.rounds}")
            in_process_row("a")
            if "p" in rows_wanted:
                queue_row("p", "plain RQ, SimpleWorker, one job per latent", plain_rq_throughput, args)
            if "b" in rows_wanted:
                label = f"latentq, 1 worker, max-batch {batch_text(args.max_batch, hw)}"
                queue_row("b", label, latentq_throughput, 1, args.max_batch, args)
            if rows_wanted & set("pbc"):
                in_process_row("a2")
            if tuned_model is not None:
                in_process_row("t", tuned_model)
            for row, wanted, workers, max_batch in (("b1", "b", 1, 1), ("c", "c", 2, args.max_batch),
                                                    ("c1", "c", 2, 1)):  # fmt: skip
                if wanted in rows_wanted and not (args.no_batch1 and row.endswith("1")):
                    queue_row(row, f"latentq, {workers} worker(s), max-batch {max_batch}", latentq_throughput,
                              workers, max_batch, args)  # fmt: skip
            write(final=False)
        model = tuned_model = None  # the in-process rows are done: free them

        def section_d() -> None:
            log(f"row d: dispatch of {args.tiny_jobs} tiny jobs, latentq vs stock RQ")
            result = guard.run("d", dispatch, stack, args.tiny_jobs, args.tiny_format, args)
            data["dispatch"] = {**result, **tiny}

        def section_e() -> None:
            # Like the throughput rows: --rounds interleaved runs per setting, each reporting its median round
            # (this machine has slow phases of several seconds that move a 1-second run's median by 2x).
            runs: dict[float, list[dict]] = {}
            for round_index in range(args.rounds):
                for wait_ms in sorted({0.0, args.max_wait_ms}):
                    log(f"row e, round {round_index + 1} of {args.rounds}: {args.latency_jobs} sequential tiny "
                        f"jobs, --max-wait-ms {wait_ms:g}")  # fmt: skip
                    runs.setdefault(wait_ms, []).append(guard.run(f"e{wait_ms:g}", light_load_latency, stack,
                                                                  args.latency_jobs, wait_ms, args))  # fmt: skip
            data["light_load"] = [median_round(rounds, "queue_median") for rounds in runs.values()]

        def section_f() -> None:
            log(f"row f: {args.memory_jobs} tiny jobs, memory after {args.memory_first} and after all, each "
                f"sampled once the {args.record_ttl} s record TTL has passed")  # fmt: skip
            data["memory"].append(guard.run("f", memory_run, stack, args.memory_jobs, args.memory_first, args,
                                            args.record_ttl))  # fmt: skip

        for row, section in (("d", section_d), ("e", section_e), ("f", section_f)):
            if row in rows_wanted:
                attempt(row, section)

    text = write(final=True)
    print(text)
    log(f"wrote {out} and {json_out} ({time.perf_counter() - run_started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
