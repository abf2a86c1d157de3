"""The rows of bench_cpu.py: each runs one setup and returns a plain dict of numbers (JSON-ready).

a/a2 in-process loop, p plain RQ, b/b1/c/c1 latentq throughput, d dispatch, e light-load overhead,
f memory. The markdown, JSON and plot are made from these dicts by report.py.
"""

from __future__ import annotations

import datetime as dt
import io
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import (
    BenchStack,
    ForeignCPU,
    Stopwatch,
    check_all_finished,
    fetch_jobs,
    log,
    percentile,
    redis_used_memory,
    rss_bytes,
    seconds_between,
    usable_cpus,
    wait_for_quiet,
    wait_registries,
    wait_worker_counts,
)
from PIL import Image

MODEL = "taef2"
CHANNELS = 32  # TAEF2 latents: (B, 32, h, w) -> (B, 3, 8h, 8w)
QUEUE = "latentq." + MODEL
PLAIN_QUEUE = "plain"  # row p's queue: a user's own, not latentq's
SUBMIT_CHUNK = 1024  # Limits.max_batch_submit
HEARTBEAT_S = 5.0  # the worker's default --heartbeat-interval: its registry cleanup runs once per interval
BENCH_DIR = Path(__file__).resolve().parent
CLOCK_SLACK_S = 0.05  # allowed disagreement between RQ's timestamps and this process's clock


# --------------------------------------------------------------------------------------------- helpers
def submit_all(client, latents: torch.Tensor, output_format: str) -> list:
    jobs = []
    for start in range(0, latents.shape[0], SUBMIT_CHUNK):
        jobs += client.submit_many(latents[start : start + SUBMIT_CHUNK], model=MODEL, output_format=output_format)
    return jobs


def count_outputs(directory: Path, ext: str) -> int:
    return sum(1 for p in directory.rglob(f"*.{ext}") if not p.name.startswith(".tmp-"))


def warm_up(client, hw: int, jobs: int) -> None:
    """A long-running service is warm: a few decodes of the benchmark's shape before timing."""
    for job in client.submit_many(torch.randn(jobs, CHANNELS, hw, hw), model=MODEL, output_format="png"):
        job.wait(timeout=120)


def load_in_process(models_file: Path, *, tuned: bool = False):
    """TAEF2 for the in-process rows: as a user's loop holds it (``TAEF2.from_file``: the default memory
    layout) or, ``tuned``, as ``latentq worker`` loads it on the CPU (channels_last: row t)."""
    from latentq.models.loader import load_model
    from latentq.models.registry import load_registry

    return load_model(load_registry(models_file).get(MODEL), "cpu", channels_last=tuned)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def latency_summary(latencies_ms: list[float]) -> dict:
    return {"p50_ms": percentile(latencies_ms, 50), "p99_ms": percentile(latencies_ms, 99),
            "mean_ms": statistics.fmean(latencies_ms), "max_ms": max(latencies_ms)}  # fmt: skip


def job_latencies(stack: BenchStack, job_ids: list[str], before: dt.datetime, seen: dt.datetime) -> dict:
    """End-to-end latency of each job from RQ's records: ended_at - enqueued_at (submit to result available:
    latentq and the plain-RQ job both store the output before RQ marks the job finished).

    Clock check: enqueued_at is stamped by this process, ended_at by the worker process, both with the
    machine's clock; every enqueued_at must fall after ``before`` (taken just before the first submit) and
    every ended_at before ``seen`` (taken just after the poll that saw the last job finished)."""
    records = fetch_jobs(stack.conn, job_ids)
    if any(r is None for r in records):
        raise RuntimeError(f"{sum(r is None for r in records)} job records missing")
    latencies = [seconds_between(r.enqueued_at, r.ended_at) * 1000 for r in records]
    early = seconds_between(min(r.enqueued_at for r in records), before)  # > 0: enqueued before we submitted
    late = seconds_between(seen, max(r.ended_at for r in records))  # > 0: ended after we saw it end
    clock_ok = early <= CLOCK_SLACK_S and late <= CLOCK_SLACK_S
    if not clock_ok:
        log(f"clock check failed: first enqueued_at {early * 1000:.1f} ms before the submit, last ended_at "
            f"{late * 1000:.1f} ms after it was seen")  # fmt: skip
    return {**latency_summary(latencies), "clock_ok": clock_ok, "clock_early_ms": early * 1000,
            "clock_late_ms": late * 1000}  # fmt: skip


# --------------------------------------------------------------------------------------------- row a
def per_decode_ms(model, hw: int, batch: int, repeats: int) -> tuple[float, float]:
    """Median ms of one decode of 1 latent, and ms per image of a decode of ``batch`` latents."""
    one = torch.randn(1, CHANNELS, hw, hw)
    many = torch.randn(batch, CHANNELS, hw, hw)
    model.decode(one)
    model.decode(many)
    singles, batched = [], []
    for _ in range(repeats):
        with Stopwatch() as sw:
            model.decode(one)
        singles.append(sw.seconds * 1000)
    for _ in range(max(1, repeats // 2)):
        with Stopwatch() as sw:
            model.decode(many)
        batched.append(sw.seconds * 1000 / batch)
    return statistics.median(singles), statistics.median(batched)


def in_process_loop(model, latents: torch.Tensor, out_dir: Path) -> dict:
    """What a user does instead of a queue: decode, to_uint8, PNG, write, one latent at a time (model loaded).

    All latents are "submitted" at the loop's start: latency of latent i = loop start to file i written."""
    from latentq.models.loader import to_uint8

    out_dir.mkdir(parents=True, exist_ok=True)
    model.decode(latents[:1])  # one warm-up decode, as the workers get
    done_ms = []
    started = time.perf_counter()
    for index in range(latents.shape[0]):
        pixels = to_uint8(model.decode(latents[index : index + 1]))[0]
        buffer = io.BytesIO()
        Image.fromarray(pixels.numpy()).save(buffer, format="PNG", compress_level=1)
        (out_dir / f"{index:05d}.png").write_bytes(buffer.getvalue())
        done_ms.append((time.perf_counter() - started) * 1000)
    seconds = done_ms[-1] / 1000
    n = latents.shape[0]
    return {"seconds": seconds, "images_per_s": n / seconds, "mean_batch": 1.0, "workers": 0, "images": n,
            **latency_summary(done_ms)}  # fmt: skip


# --------------------------------------------------------------------------------------------- row p
def spawn_plain_rq_worker(stack: BenchStack, name: str):
    """A stock RQ SimpleWorker on the user's queue, importing bench/plain_rq_job.py (``--path``)."""
    args = [sys.executable, "-c", "from rq.cli import main; main()", "worker",
            "--worker-class", "rq.worker.SimpleWorker", "--serializer", "rq.serializers.JSONSerializer",
            "--path", str(BENCH_DIR), "--url", stack.url, "--name", name, PLAIN_QUEUE]  # fmt: skip
    return stack._spawn(name, args, None, kind="rq")


def plain_rq_throughput(stack: BenchStack, latents: torch.Tensor, args) -> dict:
    """Row p: one ``Queue.enqueue`` per latent, a warm stock SimpleWorker writes each PNG."""
    from plain_rq_job import decode_to_png, latent_to_b64
    from rq import Queue
    from rq.serializers import JSONSerializer

    stack.new_scenario()
    out_dir = stack.store_dir / "plain"
    out_dir.mkdir(parents=True, exist_ok=True)
    queue = Queue(PLAIN_QUEUE, connection=stack.conn, serializer=JSONSerializer)
    worker = spawn_plain_rq_worker(stack, "tput-plain-rq")
    # warm: the worker is up and has loaded the model (first job) before the clock starts
    started = time.perf_counter()
    hw = latents.shape[-1]
    for i in range(2):
        queue.enqueue(decode_to_png, latent_to_b64(torch.randn(1, CHANNELS, hw, hw)), str(out_dir / f"warm-{i}.png"))
    while stack.conn.zcard(f"rq:finished:{PLAIN_QUEUE}") + stack.conn.zcard(f"rq:failed:{PLAIN_QUEUE}") < 2:
        if worker.process.poll() is not None or time.perf_counter() - started > args.timeout:
            raise RuntimeError(f"the plain RQ worker did not run its warm-up jobs:\n{worker.log_tail()}")
        time.sleep(0.05)
    startup = time.perf_counter() - started
    n = latents.shape[0]
    paths = [str(out_dir / f"{i:05d}.png") for i in range(n)]
    before = utc_now()
    started = time.perf_counter()
    ids = [queue.enqueue(decode_to_png, latent_to_b64(latents[i : i + 1]), paths[i]).id for i in range(n)]
    submitted = time.perf_counter()
    ended = wait_registries(stack.conn, PLAIN_QUEUE, 2 + n, timeout=args.timeout, poll=0.02, processes=[worker])
    seen = utc_now()
    seconds = ended - started
    try:
        check_all_finished(stack.conn, ids)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n--- rq worker log:\n{worker.log_tail()}") from None
    outputs = sum(Path(p).is_file() for p in paths)
    if outputs != n:
        raise RuntimeError(f"plain RQ wrote {outputs} of {n} PNG files")
    result = {"seconds": seconds, "submit_s": submitted - started, "images_per_s": n / seconds, "mean_batch": 1.0,
              "workers": 1, "images": n, "outputs": outputs, "startup_s": startup,
              **job_latencies(stack, ids, before, seen)}  # fmt: skip
    stack.stop_workers()
    return result


# --------------------------------------------------------------------------------------------- rows b, b1, c, c1
def latentq_throughput(stack: BenchStack, latents: torch.Tensor, workers: int, max_batch: int, args) -> dict:
    stack.new_scenario()
    names = [f"tput-{workers}w-b{max_batch}-{i}" for i in range(workers)]
    # Workers on one machine split its cores (--torch-threads), as a deployment of several CPU workers would:
    # each with torch's default of one thread per core would oversubscribe them.
    threads = max(1, usable_cpus() // workers)
    extra = ("--torch-threads", str(threads)) if workers > 1 else ()
    for name in names:
        stack.spawn_worker(name, max_batch=max_batch, max_wait_ms=args.max_wait_ms, log_level=args.worker_log_level,
                           extra=extra)  # fmt: skip
    startup = stack.wait_for_workers(workers)
    client = stack.client()
    warm_up(client, latents.shape[-1], jobs=2 * workers)
    stats_before = {n: stack.worker_stats(n) for n in names}
    finished_before = stack.conn.zcard(f"rq:finished:{QUEUE}")
    n = latents.shape[0]
    before = utc_now()
    started = time.perf_counter()
    jobs = submit_all(client, latents, "png")
    submitted = time.perf_counter()
    # 20 ms polls: under 0.5% quantization on these rows, and little CPU taken from the worker on 2 cores
    ended = wait_registries(stack.conn, QUEUE, finished_before + n, timeout=args.timeout, poll=0.02,
                            processes=stack.workers)  # fmt: skip
    seen = utc_now()
    seconds = ended - started
    ids = [j.id for j in jobs]
    check_all_finished(stack.conn, ids)
    outputs = count_outputs(stack.store_dir, "png")
    calls = decoded = 0
    for name in names:
        after = stack.worker_stats(name)
        calls += after.get("decode_calls", 0) - stats_before[name].get("decode_calls", 0)
        decoded += after.get("decoded_jobs", 0) - stats_before[name].get("decoded_jobs", 0)
    # the library's own wait, once, so the public path is exercised
    results = jobs[-1].wait(timeout=30)
    assert results and results[0].content_type == "image/png", results
    latency = job_latencies(stack, ids, before, seen)
    client.close()
    stack.stop_workers()
    return {"seconds": seconds, "submit_s": submitted - started, "images_per_s": n / seconds, "workers": workers,
            "max_batch": max_batch, "images": n, "mean_batch": decoded / calls if calls else float("nan"),
            "outputs": outputs, "startup_s": startup, **latency}  # fmt: skip


# --------------------------------------------------------------------------------------------- row d
def timeline(stack: BenchStack, job_ids: list[str]) -> dict:
    """Rate from RQ's timestamps, and the queue's own cost per job: span / jobs - mean decode per job.

    decode per job = the job result's decode_ms / its batch_size (a latentq job reports its whole batch's
    decode time), so the sum over jobs is the time spent inside decodes. After the first job: the rest of
    the span / the other jobs, minus the steady decode per job, i.e. the mean over the jobs that started
    after the first ended (this leaves out the first call's warm-up, and the first batch's, which fell
    before the rest of the span)."""
    records = fetch_jobs(stack.conn, job_ids)
    missing = sum(r is None for r in records)
    if missing:
        raise RuntimeError(f"{missing} job records missing")
    starts = [r.started_at for r in records]
    ends = [r.ended_at for r in records]
    first = min(range(len(records)), key=lambda i: starts[i])
    t0, t1 = starts[first], max(ends)
    seconds = seconds_between(t0, t1)
    rest = seconds_between(ends[first], t1)
    decode = []
    for record in records:
        value = record.return_value() or {}
        decode.append(float(value.get("decode_ms", "nan")) / max(1, int(value.get("batch_size", 1))))
    n = len(job_ids)
    mean_decode = sum(decode) / n
    steady = [decode[i] for i in range(n) if starts[i] >= ends[first]]
    rest_decode = sum(steady) / len(steady) if steady else float("nan")
    return {"seconds": seconds, "jobs": n, "jobs_per_s": n / seconds,
            "first_job_ms": seconds_between(starts[first], ends[first]) * 1000,
            "rest_jobs_per_s": (n - 1) / rest if rest > 0 else float("nan"),
            "decode_ms_per_job": mean_decode, "queue_ms_per_job": seconds * 1000 / n - mean_decode,
            "queue_ms_per_job_after_first": rest * 1000 / max(1, n - 1) - rest_decode}  # fmt: skip


def dispatch(stack: BenchStack, count: int, output_format: str, args) -> dict:
    tiny = torch.randn(count, CHANNELS, 1, 1)

    # latentq: jobs queued first, then the worker starts; timed from the first job's start to the last end
    stack.new_scenario()
    client = stack.client()
    jobs = submit_all(client, tiny, output_format)
    worker = stack.spawn_worker("dispatch-latentq", max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                                log_level=args.worker_log_level)  # fmt: skip
    wall_start = time.perf_counter()
    wait_registries(stack.conn, QUEUE, count, timeout=args.timeout, poll=0.05, processes=stack.workers)
    wall = time.perf_counter() - wall_start
    ids = [j.id for j in jobs]
    check_all_finished(stack.conn, ids)
    ours = timeline(stack, ids)
    stats = stack.worker_stats(worker.name)
    ours["mean_batch"] = stats.get("decoded_jobs", 0) / max(1, stats.get("decode_calls", 0))
    ours["wall_incl_start_s"] = wall
    client.close()
    stack.stop_workers()

    # plain RQ: the same jobs, a stock SimpleWorker in burst mode running latentq's decode_job
    stack.new_scenario()
    client = stack.client()
    jobs = submit_all(client, tiny, output_format)
    worker = stack.spawn_rq_worker("dispatch-rq")
    wall_start = time.perf_counter()
    try:
        worker.process.wait(args.timeout)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"the stock rq worker did not finish within {args.timeout} s:\n{worker.log_tail()}")
    wall = time.perf_counter() - wall_start
    ids = [j.id for j in jobs]
    try:
        check_all_finished(stack.conn, ids)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n--- rq worker log:\n{worker.log_tail()}") from None
    theirs = timeline(stack, ids)
    theirs["wall_incl_start_s"] = wall
    theirs["mean_batch"] = 1.0
    client.close()
    stack.stop_workers()
    return {"latentq": ours, "plain_rq": theirs, "ratio": ours["jobs_per_s"] / theirs["jobs_per_s"]}


# --------------------------------------------------------------------------------------------- row e
def light_load_latency(stack: BenchStack, count: int, max_wait_ms: float, args) -> dict:
    """One job at a time. Overhead = end-to-end minus the worker's own decode_ms, three ways:

    server: ended_at - enqueued_at (RQ's timestamps) - decode_ms
    queue: server minus the job's encode_ms and store_ms too: what the queue adds to the work
           (decode, PNG, write) that the in-process loop does as well
    client: the submit() call until Job.wait() returns (woken by the worker's pub/sub message) - decode_ms
    """
    stack.new_scenario()
    stack.spawn_worker(f"latency-w{max_wait_ms:g}", max_batch=args.max_batch, max_wait_ms=max_wait_ms,
                       log_level=args.worker_log_level)  # fmt: skip
    stack.wait_for_workers(1)
    client = stack.client()
    warm_up(client, 1, jobs=3)
    latent = torch.randn(1, CHANNELS, 1, 1)
    samples = []
    for _ in range(count):
        t_submit = time.perf_counter()
        job = client.submit(latent, model=MODEL, output_format=args.tiny_format)
        job.wait(timeout=30)
        samples.append((job.id, (time.perf_counter() - t_submit) * 1000))
        time.sleep(0.002)  # light load: let the worker go back to its blocking pop
    records = fetch_jobs(stack.conn, [s[0] for s in samples])
    server, queue, client_side, queue_wait, post, decode = [], [], [], [], [], []
    for (_, client_ms), record in zip(samples, records):
        value = record.return_value() or {}
        decode_ms = float(value["decode_ms"])
        server.append(seconds_between(record.enqueued_at, record.ended_at) * 1000 - decode_ms)
        queue.append(server[-1] - float(value.get("encode_ms", 0.0)) - float(value.get("store_ms", 0.0)))
        client_side.append(client_ms - decode_ms)
        queue_wait.append(seconds_between(record.enqueued_at, record.started_at) * 1000)
        post.append(seconds_between(record.started_at, record.ended_at) * 1000 - decode_ms)
        decode.append(decode_ms)
    client.close()
    stack.stop_workers()
    return {"max_wait_ms": max_wait_ms, "server_median": statistics.median(server),
            "server_p90": percentile(server, 90), "queue_median": statistics.median(queue),
            "queue_p90": percentile(queue, 90), "client_median": statistics.median(client_side),
            "client_p90": percentile(client_side, 90), "queue_wait_median": statistics.median(queue_wait),
            "post_median": statistics.median(post), "decode_median": statistics.median(decode),
            "n": count}  # fmt: skip


# --------------------------------------------------------------------------------------------- row f
def memory_run(stack: BenchStack, total: int, first: int, args, record_ttl: int) -> dict:
    """``first`` tiny jobs, sample; the rest, sample. Each sample waits until the jobs' Redis records
    expired (``record_ttl``) and the worker's registry cleanup ran; then every job's status is read
    back (from the store, for records Redis no longer holds)."""
    stack.new_scenario()
    worker = stack.spawn_worker(f"memory-ttl{record_ttl}", max_batch=args.max_batch,
                                max_wait_ms=args.max_wait_ms, log_level=args.worker_log_level)  # fmt: skip
    stack.wait_for_workers(1)
    client = stack.client(record_ttl=record_ttl)
    tiny = torch.randn(total, CHANNELS, 1, 1)
    conn = stack.conn
    redis_empty = redis_used_memory(conn)
    settle_s = record_ttl + 2 * HEARTBEAT_S + 1.0
    job_ids: list[str] = []

    def run(latents: torch.Tensor, done_before: int) -> None:
        # The worker's own counters: job records leave Redis record_ttl after they finish.
        job_ids.extend(job.id for job in submit_all(client, latents, args.tiny_format))
        _, failed = wait_worker_counts(stack, [worker.name], done_before + latents.shape[0], timeout=args.timeout,
                                       poll=0.05)  # fmt: skip
        if failed:
            raise RuntimeError(f"{failed} jobs failed in the memory run:\n{worker.log_tail()}")

    def sample() -> tuple[int, int, int, int]:
        time.sleep(settle_s)
        keys = conn.dbsize()
        return redis_used_memory(conn), rss_bytes(worker.pid), keys, bounded_index_bytes(conn)

    run(tiny[:first], 0)
    redis_first, rss_first, keys_first, indexes_first = sample()
    run(tiny[first:], first)
    redis_all, rss_all, keys_all, indexes_all = sample()
    answered = sum(client.job_info(job_id).status.value == "finished" for job_id in job_ids)
    in_redis = sum(conn.exists(f"rq:job:{job_id}") for job_id in job_ids)
    client.close()
    stack.stop_workers()
    return {"record_ttl": record_ttl, "settle_s": settle_s, "redis_empty": redis_empty, "redis_first": redis_first,
            "redis_all": redis_all, "rss_first": rss_first, "rss_all": rss_all, "keys_first": keys_first,
            "keys_all": keys_all, "per_job_bytes": (redis_all - redis_first) / max(1, total - first),
            "indexes_first": indexes_first, "indexes_all": indexes_all,
            "statuses_answered": answered, "records_in_redis": in_redis, "jobs": len(job_ids)}  # fmt: skip


def bounded_index_bytes(conn) -> int:
    """Bytes of the indexes that grow with jobs up to a bound, not for ever: each tenant's recent jobs (GET
    /v1/jobs: at most RECENT_JOBS_LIMIT ids) and each queue's fair-share order (at most the queue's length at
    its last submit; dropped at the next submit to an empty queue, or after the latent TTL)."""
    from latentq.state import keys

    patterns = (keys.recent_jobs_key("*"), keys.fair_order_key("*"))
    return sum(conn.memory_usage(key) or 0 for pattern in patterns for key in conn.scan_iter(match=pattern))


# --------------------------------------------------------------------------------------------- a shared machine
class Guard:
    """Wait for a quiet machine before a row; measure what other processes used during it."""

    def __init__(self, args) -> None:
        self.args = args
        self.load: dict[str, float] = {}
        self.attempts: dict[str, list[list[float]]] = {}  # row -> per call (round), each attempt's disturbance

    def run(self, row: str, fn, *fn_args, **fn_kwargs):
        """Run a row; if other processes used >= 0.10 cores meanwhile, wait and rerun it (``--retries``),
        keeping the least disturbed attempt. Every attempt's disturbance is kept for the report."""
        best = None
        tries: list[float] = []
        self.attempts.setdefault(row, []).append(tries)
        for attempt in range(1 + max(0, self.args.retries)):
            if self.args.quiet_wait > 0:
                wait_for_quiet(self.args.quiet_wait)
            probe = ForeignCPU()
            result = fn(*fn_args, **fn_kwargs)
            cores = probe.cores()
            tries.append(cores)
            if best is None or cores < best[0]:
                best = (cores, result)
            if cores < 0.10:
                break
            log(
                f"row {row}: other processes used {cores:.2f} cores meanwhile; "
                + ("running it again" if attempt < self.args.retries else "keeping the least disturbed attempt")
            )
        self.load[row] = max(self.load.get(row, 0.0), best[0])  # the worst round's
        return best[1]

    def note(self, row: str) -> str:
        cores = self.load.get(row, 0.0)
        return f"other procs {cores:.2f} cores" if cores >= 0.05 else ""

    def disturbed(self) -> list[str]:
        return [
            f"{row}: other processes used {cores:.2f} cores on average"
            for row, cores in self.load.items()
            if cores >= 0.10
        ]

    def retried(self) -> list[str]:
        return [
            f"{row}{f' (round {i + 1})' if len(calls) > 1 else ''}: {len(tries)} attempts, other processes' cores "
            f"{', '.join(f'{c:.2f}' for c in tries)}"
            for row, calls in self.attempts.items()
            for i, tries in enumerate(calls)
            if len(tries) > 1
        ]
