"""bench/gpu.py's Q row: latentq end to end, one fresh worker per model, and the worker's memory.

A worker that dies, a job that fails or a wait that runs past its time raises here with a one-line
reason; gpu.py turns it into the model's ``failed: ...`` row and goes on to the next model.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import threading
import time
from typing import Any

from common import BenchStack, Worker, job_statuses, log
from gpu_report import Result, Row

MIB = 2**20


def worker_options() -> dict[str, argparse.Action]:
    """The options ``latentq worker`` takes, by flag (--compile and --channels-last: where this version has them)."""
    from latentq.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {opt: action for action in sub.choices["worker"]._actions for opt in action.option_strings}


def worker_flags(args, device, options: dict[str, argparse.Action]) -> list[str]:
    """--channels-last on (the worker's default on a GPU and a CPU alike, said explicitly) and --compile."""
    flags = []
    channels_last = options.get("--channels-last")
    if channels_last is not None and (channels_last.choices or device.type == "cuda"):
        flags += ["--channels-last", "on"] if channels_last.choices else ["--channels-last"]
    if args.compile and "--compile" in options:
        flags.append("--compile")
    return flags


def queue_setting(case, args, device, flags: list[str]) -> dict[str, Any]:
    """Q's own decode settings: the worker's dtype (the models file's), layout, batch and compile."""
    latent, frames = case.shape(args.small)
    pixels = latent[-2] * 8 * latent[-1] * 8 * frames  # the output's: every family here upsamples 8x
    return {"dtype": case.dtype if device.type == "cuda" else "float32",
            "batch": worker_batch(pixels, max(args.batches), device),
            "channels_last": "--channels-last" in flags and not case.video,  # the loader keeps 3-D convs as they are
            "compile": "--compile" in flags}  # fmt: skip


def worker_batch(output_pixels: int, max_batch: int, device) -> int:
    """The batch the worker decodes for jobs of ``output_pixels`` each: --max-batch within its device's
    default pixel budget (``latentq.worker.pipeline.group_for_decode``)."""
    try:
        from latentq.worker.defaults import BATCH_DEFAULTS

        budget = BATCH_DEFAULTS.get(device.type, {}).get("max_batch_pixels")
    except ImportError:
        budget = None
    return max(1, min(max_batch, budget // max(1, output_pixels))) if budget else max_batch


def start_workers(stack: BenchStack, cases: list, args, device, flags: list[str]) -> dict[str, Worker]:
    """One worker per model, serving that model alone (so its peak memory is this model's), all started at
    once: they load side by side before anything is timed, and wait idle until their model's Q."""
    return {case.model: stack.spawn_worker(f"gpu-bench-{case.model}", model=case.model, device=str(device),
                                           max_batch=max(args.batches), max_wait_ms=args.max_wait_ms,
                                           extra=["--no-previews", *flags]) for case in cases}  # fmt: skip


def _registered(stack: BenchStack, model: str) -> bool:
    from rq import Queue
    from rq import Worker as RQWorker

    from latentq import keys

    return RQWorker.count(connection=stack.conn, queue=Queue(keys.queue_name(model), connection=stack.conn)) >= 1


def died(worker: Worker, what: str) -> RuntimeError:
    """The error of a worker that exited (its log's tail goes to the log, the reason stays one line)."""
    log(f"   worker {worker.name} exited ({worker.process.returncode}); its log ends:\n{worker.log_tail(1500)}")
    return RuntimeError(f"the worker exited ({worker.process.returncode}) {what}")


def wait_loaded(stack: BenchStack, workers: dict[str, Worker], timeout: float) -> tuple[float, list[str]]:
    """Until every worker is registered on its model's queue or has exited (its model's Q says so), or
    ``timeout`` (a slow one is waited for again before its Q); the seconds waited and the models still loading."""
    started = time.monotonic()
    pending = dict(workers)
    while pending and time.monotonic() - started < timeout:
        for model, worker in list(pending.items()):
            if worker.process.poll() is not None or _registered(stack, model):
                del pending[model]
        time.sleep(0.1)
    return time.monotonic() - started, list(pending)


def ensure_ready(stack: BenchStack, model: str, worker: Worker, timeout: float) -> float:
    """The model's worker registered, or an error: it exited (while loading), or did not load in time."""
    started = time.monotonic()
    while not _registered(stack, model):
        if worker.process.poll() is not None:
            raise died(worker, "before its Q (while loading its model)")
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"the worker did not load its model within {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - started


def stop_worker(stack: BenchStack, worker: Worker) -> None:
    """Stop one model's worker (its GPU memory freed before the next model's rows)."""
    from latentq.local.stack import stop_processes

    stop_processes([worker.process], 30.0)
    if worker in stack.workers:
        stack.workers.remove(worker)


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


def wait_jobs(stack: BenchStack, client, queue: str, jobs: list, before: tuple[int, int], timeout: float,
              worker: Worker) -> float:  # fmt: skip
    """Until ``jobs`` are all in the queue's finished registry (``before``: its and the failed registry's
    sizes before they were submitted); ``time.perf_counter()`` then. Raises at once when one of them
    failed or the worker died, and after ``timeout`` s."""
    from rq.registry import FailedJobRegistry, FinishedJobRegistry

    finished = FinishedJobRegistry(queue, connection=stack.conn).key
    failed = FailedJobRegistry(queue, connection=stack.conn).key
    deadline = time.monotonic() + timeout
    while True:
        with stack.conn.pipeline(transaction=False) as pipe:
            pipe.zcard(finished)
            pipe.zcard(failed)
            done, bad = (count - base for count, base in zip(pipe.execute(), before))
        if done >= len(jobs):
            return time.perf_counter()
        if bad > 0:
            ids = [job.id for job in jobs]
            lost = [i for i, s in zip(ids, job_statuses(stack.conn, ids)) if s == b"failed"]
            error = client.job_info(lost[0]).error if lost else "(not one of this row's jobs)"
            raise RuntimeError(f"{bad} job(s) failed: {(str(error).strip().splitlines() or [''])[-1][:120]}")
        if worker.process.poll() is not None:
            raise died(worker, f"with {done} of {len(jobs)} jobs finished")
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done} of {len(jobs)} jobs finished after {timeout:.0f} s")
        time.sleep(0.005)


def _sizes(stack: BenchStack, queue: str) -> tuple[int, int]:
    return stack.conn.zcard(f"rq:finished:{queue}"), stack.conn.zcard(f"rq:failed:{queue}")


def through_latentq(case, stack: BenchStack, worker: Worker, args, result: Result, deadline: float,
                    latent: tuple[int, ...], frames: int, kill_worker: bool = False) -> Row:  # fmt: skip
    """Q: ``submit_many`` of N latents, timed from the first submit to the last job finished (worker warm)."""
    import torch

    from latentq import keys

    batch = result.matched["batch"]
    queue = keys.queue_name(case.model)
    client = stack.client()
    try:
        if kill_worker:  # --fail-model MODEL:worker: the worker dies before Q's jobs (a test's fault)
            log(f"   killing the worker (pid {worker.pid}): --fail-model {case.model}:worker")
            worker.process.kill()
        before = _sizes(stack, queue)
        warm = client.submit_many(torch.randn(batch, *latent), model=case.model, output_format=case.fmt)
        wait_jobs(stack, client, queue, warm, before, max(60.0, deadline - time.monotonic() + 60), worker)
        seconds = max(2.0, deadline - time.monotonic())
        expected = result.rows["L best"].rate / frames * 0.8  # outputs/s; Q is at most L
        count = int(min(args.max_items, max(2 * batch, 0.5 * expected * seconds)))  # half the share: Q may be slower
        count = max(batch, count - count % batch)
        latents = torch.randn(count, *latent)
        before = _sizes(stack, queue)
        started = time.perf_counter()
        with ProcessMemory(worker.pid) as smi:
            jobs = client.submit_many(latents, model=case.model, output_format=case.fmt)
            ended = wait_jobs(stack, client, queue, jobs, before, max(60.0, 4 * seconds), worker)
        ids = [job.id for job in jobs]
        statuses = {(s or b"missing").decode() for s in job_statuses(stack.conn, ids)}
        if statuses != {"finished"}:
            raise RuntimeError(f"jobs ended {sorted(statuses)}")
    finally:
        client.close()
    stats = stack.worker_stats(worker.name)
    note = f"{count} jobs"
    if stats.get("decode_calls"):
        mean = stats.get("decoded_jobs", 0) / stats["decode_calls"]
        note += f"; the worker's mean batch {mean:.1f} (warm-up included)"
        if abs(mean - batch) > 0.5:
            note += f", not L matched's {batch}"
    worker_peak = stats.get("gpu_peak_allocated")
    peak = worker_peak / MIB if worker_peak else smi.peak
    if worker_peak:
        note += "; peak: the worker's max_memory_allocated, this model alone"
        if smi.peak:
            note += f" (nvidia-smi: {smi.peak:.0f} MiB)"
    elif smi.peak:
        note += "; peak: nvidia-smi, the worker process"
    return Row("Q", "", count * frames / (ended - started), peak, note, status="ok")
