"""Shared helpers for the latentq benchmarks.

Nothing here is part of the ``latentq`` package: the benchmarks drive latentq
the way a user does (real Redis server, worker processes started through
``python -m latentq worker``, the public ``latentq.Client``) and time it.

- :class:`BenchStack`: a private Redis (``latentq.local.redis_server.EmbeddedRedis``),
  a models file, a result-store directory, and the worker processes.
- timing: :class:`Stopwatch`, :func:`percentile`, :func:`summarize_ms`.
- :func:`markdown_table`, :func:`rss_bytes`, :func:`redis_used_memory`.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis

from latentq.local.stack import stop_processes

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_TAEF2 = (REPO.parent / "shared" / "models" / "taef2").resolve()

# RQ's job statuses as stored in the job hash.
FINAL_OK = b"finished"
FINAL_BAD = (b"failed", b"stopped", b"canceled")


# --------------------------------------------------------------------------------------------- models files
# Full-size VAE configs for the GPU scripts: the repos' vae/config.json, less bookkeeping keys. latentq's
# registry (src/latentq/models/registry.py) names only the hub sources, not the architectures.
_KL: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "norm_num_groups": 32,
}
VAE_CONFIGS: dict[str, dict[str, Any]] = {
    "sd15": {**_KL, "latent_channels": 4, "sample_size": 512, "scaling_factor": 0.18215},
    # stabilityai/sdxl-vae. force_upcast only tells pipelines to decode in float32 (the real weights overflow
    # in fp16); the VAE ignores it, so here SDXL decodes in fp16 like madebyollin/sdxl-vae-fp16-fix would.
    "sdxl": {**_KL, "latent_channels": 4, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
    "flux1": {**_KL, "latent_channels": 16, "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
              "use_quant_conv": False, "use_post_quant_conv": False, "force_upcast": True},
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers' vae/config.json (AutoencoderKLWan; its defaults are the same VAE).
    "wan": {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
            "temperal_downsample": [False, True, True], "dropout": 0.0,
            "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715,
                             0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
            "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652,
                            1.5579, 1.6382, 1.1253, 2.8251, 1.916]},
}  # fmt: skip

def toml_value(value: Any) -> str:
    """A TOML value for a str / bool / number / list / dict (dicts become inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    if value is None:
        raise ValueError("TOML has no null")
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def write_models_file(path: Path, models: dict[str, dict[str, Any]]) -> Path:
    """Write ``[models.<name>]`` tables: ``{"taef2": {"source": "/abs/path"}}``."""
    lines = []
    for name, table in models.items():
        lines.append(f"[models.{_toml_key(name)}]")
        for key, value in table.items():
            lines.append(f"{_toml_key(key)} = {toml_value(value)}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def taef2_models(source: Path | str = DEFAULT_TAEF2) -> dict[str, dict[str, Any]]:
    source = Path(source).expanduser().resolve()
    if not (source / "taef2.safetensors").is_file() and not source.is_file():
        raise SystemExit(f"TAEF2 weights not found at {source} (expected taef2.safetensors); pass --taef2 PATH")
    return {"taef2": {"source": str(source)}}


# --------------------------------------------------------------------------------------------- the stack
@dataclass
class Worker:
    name: str
    process: subprocess.Popen
    log_path: Path
    kind: str = "latentq"  # or "rq"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class BenchStack:
    """A private Redis plus latentq worker processes, all stopped on exit.

    >>> with BenchStack(taef2_models()) as stack:
    ...     stack.spawn_worker("w1", max_batch=8)
    ...     stack.wait_for_workers(1)
    ...     client = stack.client()
    """

    models: dict[str, dict[str, Any]]
    extra_env: dict[str, str] = field(default_factory=dict)
    keep_dir: bool = False
    redis_url: str | None = None  # an existing, disposable Redis database (it is emptied!); default: a private one
    worker_env: dict[str, str] = field(default_factory=dict)  # extra environment of latentq workers only
    worker_args: Sequence[str] = ()  # extra command-line arguments of latentq workers
    work_dir: str | None = None  # where the stack's directory (stores, logs) goes; default: the system temp dir

    def __post_init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="latentq-bench-", dir=self.work_dir)
        self.dir = Path(self._tmp.name)
        self.models_file = write_models_file(self.dir / "models.toml", self.models)
        self.redis = None
        self.workers: list[Worker] = []
        self._scenario = 0
        self.store_dir = self.dir / "store-0"

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> BenchStack:
        from latentq.local.redis_server import EmbeddedRedis, redis_server_binary

        if self.redis_url is None:
            try:
                redis_server_binary()
            except RuntimeError as exc:
                raise SystemExit(f"{exc}\n(or point the benchmark at a disposable Redis database with --redis-url)")
            self.redis = EmbeddedRedis().start()
        self.conn = Redis.from_url(self.url)
        self.conn.ping()
        return self

    def close(self) -> None:
        self.stop_workers()
        try:
            self.conn.close()
        except Exception:
            pass
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if not self.keep_dir:
            self._tmp.cleanup()

    def __enter__(self) -> BenchStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        if self.redis_url:
            return self.redis_url
        assert self.redis is not None, "start() first"
        return self.redis.url

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment every process of the current scenario shares."""
        return {
            **os.environ,
            "LATENTQ_REDIS_URL": self.url,
            "LATENTQ_MODELS": str(self.models_file),
            "LATENTQ_STORE": str(self.store_dir),
            **self.extra_env,
            **overrides,
        }

    def new_scenario(self) -> None:
        """Stop all workers, empty Redis and switch to a fresh store directory."""
        self.stop_workers()
        self.conn.flushdb()
        self._scenario += 1
        self.store_dir = self.dir / f"store-{self._scenario}"
        self.store_dir.mkdir(parents=True, exist_ok=True)

    def client(self, **settings_overrides: Any):
        """A ``latentq.Client`` on this stack (settings overrides such as ``record_ttl=60``).

        Redis keeps job records an hour unless told otherwise: the rows read each job's RQ record
        (timings, batch size) after the run. The worker's commit writes the same either way.
        """
        settings_overrides.setdefault("record_ttl", 3600)
        import dataclasses

        from latentq import Client
        from latentq.config import Settings

        env = self.env()
        saved = {k: os.environ.get(k) for k in ("LATENTQ_REDIS_URL", "LATENTQ_MODELS", "LATENTQ_STORE")}
        try:
            for key in saved:
                os.environ[key] = env[key]
            settings = Settings.from_env()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        if settings_overrides:
            settings = dataclasses.replace(settings, **settings_overrides)
        return Client(settings=settings)

    # --- workers ----------------------------------------------------------------------
    def spawn_worker(self, name: str, *, model: str = "taef2", device: str = "cpu", max_batch: int | None = 8,
                     max_wait_ms: float = 5.0, dtype: str | None = None, log_level: str | None = None,
                     extra: Sequence[str] = (), env: dict[str, str] | None = None) -> Worker:  # fmt: skip
        """``python -m latentq worker ...`` as ``latentq up`` starts it (its log goes to a file in the stack's directory)."""
        from latentq.local.stack import worker_command

        args = worker_command([model], device=device, max_batch=max_batch, max_wait_ms=max_wait_ms, dtype=dtype,
                              name=name, log_level=log_level, extra=[*extra, *self.worker_args])  # fmt: skip
        return self._spawn(name, args, {**self.worker_env, **(env or {})}, kind="latentq")

    def spawn_rq_worker(self, name: str, *, model: str = "taef2", burst: bool = True,
                        env: dict[str, str] | None = None) -> Worker:  # fmt: skip
        """A stock RQ ``SimpleWorker`` (no fork per job) that runs ``latentq.worker.tasks.decode_job``."""
        from latentq.state import keys

        args = [sys.executable, "-c", "from rq.cli import main; main()", "worker",
                "--worker-class", "rq.worker.SimpleWorker", "--serializer", "rq.serializers.JSONSerializer",
                "--url", self.url, "--name", name]  # fmt: skip
        if burst:
            args.append("--burst")
        args.append(keys.queue_name(model))
        return self._spawn(name, args, env, kind="rq")

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None, kind: str) -> Worker:
        log_path = self.dir / f"{name}-{len(self.workers)}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(args, env=self.env(**(env or {})), stdout=log, stderr=subprocess.STDOUT,
                                       cwd=str(REPO))  # fmt: skip
        worker = Worker(name, process, log_path, kind)
        self.workers.append(worker)
        return worker

    def wait_for_workers(self, count: int, model: str = "taef2", timeout: float = 120.0) -> float:
        """Block until ``count`` workers listen on the model's queue; return the seconds waited."""
        from latentq.local.stack import wait_for_workers

        def exited() -> None:
            for worker in self.workers:
                if worker.process.poll() is not None and worker.kind == "latentq":
                    code = worker.process.returncode
                    raise RuntimeError(f"worker {worker.name} exited ({code}):\n{worker.log_tail()}")

        return wait_for_workers(self.conn, model, count, timeout, exited)

    def stop_workers(self, timeout: float = 30.0) -> None:
        """SIGTERM every worker (warm shutdown), SIGKILL what is left after ``timeout``."""
        stop_processes([w.process for w in self.workers], timeout)
        self.workers = []

    def worker_stats(self, name: str) -> dict[str, int]:
        from latentq.state import keys

        raw = self.conn.hgetall(keys.worker_stats_key(name))
        stats = {}
        for key, value in raw.items():
            try:
                stats[key.decode()] = int(value)
            except ValueError:
                pass
        return stats


# --------------------------------------------------------------------------------------------- waiting on jobs
def wait_registries(conn: Redis, queue_name: str, expected: int, timeout: float, poll: float = 0.005,
                    processes: Sequence[Worker] = ()) -> float:  # fmt: skip
    """Poll the queue's finished + failed registries (cheap ZCARDs) until ``expected`` jobs ended.

    Returns ``time.perf_counter()`` at the poll that saw them all. RQ adds a job to
    its FinishedJobRegistry in the same transaction that marks it finished (unless
    the job's result_ttl is 0).
    """
    from rq.registry import FailedJobRegistry, FinishedJobRegistry

    finished = FinishedJobRegistry(queue_name, connection=conn).key
    failed = FailedJobRegistry(queue_name, connection=conn).key
    deadline = time.monotonic() + timeout
    while True:
        with conn.pipeline(transaction=False) as pipe:
            pipe.zcard(finished)
            pipe.zcard(failed)
            done, bad = pipe.execute()
        if done + bad >= expected:
            return time.perf_counter()
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {w.name}:\n{w.log_tail(1500)}" for w in processes)
            raise TimeoutError(f"only {done} finished + {bad} failed of {expected} after {timeout} s\n{tails}")
        time.sleep(poll)


def wait_worker_counts(stack: BenchStack, names: Sequence[str], expected: int, timeout: float,
                       poll: float = 0.005) -> tuple[int, int]:  # fmt: skip
    """Poll the latentq workers' stats hashes until their ``finished + failed`` reach ``expected``.

    Unlike job records or RQ's registries, these counters do not expire with the record TTL.
    Returns (finished, failed).
    """
    from latentq.state import keys

    deadline = time.monotonic() + timeout
    while True:
        with stack.conn.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(keys.worker_stats_key(name), "finished", "failed")
            rows = pipe.execute()
        finished = sum(int(r[0] or 0) for r in rows)
        failed = sum(int(r[1] or 0) for r in rows)
        if finished + failed >= expected:
            return finished, failed
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {w.name}:\n{w.log_tail(1500)}" for w in stack.workers)
            raise TimeoutError(f"only {finished} finished + {failed} failed of {expected} after {timeout} s\n{tails}")
        time.sleep(poll)


def job_statuses(conn: Redis, job_ids: Sequence[str]) -> list[bytes | None]:
    with conn.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(f"rq:job:{job_id}", "status")
        return pipe.execute()


def fetch_jobs(conn: Redis, job_ids: Sequence[str]):
    """RQ job records (JSON serializer), in order; None for a missing one."""
    from rq.job import Job as RQJob
    from rq.serializers import JSONSerializer

    jobs = []
    for start in range(0, len(job_ids), 500):
        jobs += RQJob.fetch_many(list(job_ids[start : start + 500]), connection=conn, serializer=JSONSerializer)
    return jobs


def check_all_finished(conn: Redis, job_ids: Sequence[str]) -> None:
    statuses = job_statuses(conn, job_ids)
    bad = [(j, s) for j, s in zip(job_ids, statuses) if s != FINAL_OK]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(job_ids)} jobs did not finish, e.g. {bad[:3]}")


# --------------------------------------------------------------------------------------------- timing
class Stopwatch:
    """``with Stopwatch() as sw: ...; sw.seconds``"""

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize_ms(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values) if values else float("nan"),
        "p90": percentile(values, 90),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
    }


def seconds_between(start, end) -> float:
    return (end - start).total_seconds()


# --------------------------------------------------------------------------------------------- memory
def rss_bytes(pid: int) -> int:
    """Resident set size of a process (psutil, else /proc/<pid>/status)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:
        pass
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def default_work_dir() -> str | None:
    """A RAM-backed directory (/dev/shm) when there is one: output files of every system go there, so
    that the disk's stalls (small VM disks pause file creation for ~0.5 ms at random) do not add noise
    that differs between rows. None: the system temp dir."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def redis_used_memory(conn: Redis) -> int:
    return int(conn.info("memory")["used_memory"])


def mib(value: float) -> str:
    return f"{value / (1024 * 1024):.1f} MiB"


# --------------------------------------------------------------------------------------------- output
def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [["" if cell is None else str(cell) for cell in row] for row in rows]
    headers = [str(h) for h in headers]
    widths = [max([len(h)] + [len(r[i]) for r in rows if i < len(r)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        cells = list(cells) + [""] * (len(headers) - len(cells))
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def fmt(value: float, digits: int = 2) -> str:
    if value != value:  # nan
        return "n/a"
    return f"{value:.{digits}f}"


def ratio(value: float, baseline: float) -> str:
    if not baseline or value != value or baseline != baseline:
        return "n/a"
    return f"{value / baseline:.2f}x"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def machine_summary() -> str:
    import platform

    try:
        import torch

        torch_info = f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads"
    except ImportError:  # pragma: no cover
        torch_info = "no torch"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {usable_cpus()} CPUs usable (of {os.cpu_count()}), Python {platform.python_version()}, {torch_info}"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: ``taskset -c 0,1`` gives 2)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- a shared machine
class ForeignCPU:
    """CPU seconds used by everything outside this benchmark's process tree since construction.

    Benchmarks on a small shared machine are only as good as its quietness: each row
    records how many cores other processes used meanwhile, so a disturbed number is
    visible in the report instead of silently wrong. It is the machine's busy time
    (psutil.cpu_times: all but idle, iowait, steal and guest) minus this process's,
    its live descendants' and its reaped children's CPU time.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self._busy0 = self._busy()
        self._own0, self._live0 = self._own()

    @staticmethod
    def _busy() -> float:
        import psutil

        t = psutil.cpu_times()
        skip = ("idle", "iowait", "steal", "guest", "guest_nice")
        return sum(getattr(t, name) for name in t._fields if name not in skip)

    @staticmethod
    def _own() -> tuple[float, dict[tuple[int, float], float]]:
        import psutil

        times = os.times()
        own = times.user + times.system + times.children_user + times.children_system
        live = {}
        for child in psutil.Process().children(recursive=True):
            try:
                cpu = child.cpu_times()
                live[(child.pid, child.create_time())] = cpu.user + cpu.system
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return own, live

    def seconds(self) -> float:
        busy = self._busy() - self._busy0
        own1, live1 = self._own()
        ours = own1 - self._own0
        ours += sum(cpu - self._live0.get(key, 0.0) for key, cpu in live1.items())
        # children alive at the start and reaped since: os.times counts their whole life
        ours -= sum(cpu for key, cpu in self._live0.items() if key not in live1)
        return max(0.0, busy - ours)

    def cores(self) -> float:
        """Average cores used by other processes since construction."""
        wall = time.perf_counter() - self.started
        return self.seconds() / wall if wall > 0 else 0.0


def wait_for_quiet(max_wait: float, threshold_cores: float = 0.15, window: float = 1.0) -> tuple[float, float]:
    """Wait (up to ``max_wait`` s) until other processes use under ``threshold_cores`` over ``window`` s.

    Returns (seconds waited, the last window's foreign cores).
    """
    started = time.perf_counter()
    announced = False
    while True:
        probe = ForeignCPU()
        time.sleep(window)
        cores = probe.cores()
        waited = time.perf_counter() - started
        if cores < threshold_cores or waited >= max_wait:
            return waited, cores
        if not announced:
            log(f"the machine is busy (other processes use {cores:.2f} cores); waiting up to {max_wait:.0f} s")
            announced = True


def load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
        return f"{one:.2f} / {five:.2f}"
    except OSError:
        return "n/a"


def exit_on_sigterm() -> None:
    """SIGTERM -> SystemExit, so that the ``with`` blocks stop the workers and the Redis server."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
