"""Scale-out: K latentq workers against one Redis, with a simulated GPU.

    python bench/scaleout.py [--workers 1,2,4,8] [--batch-ms 150] [--window 15] [--netns] [--api]

Each worker is a real ``python -m latentq worker`` whose "GPU" is a sleep of
``--batch-ms`` per decode call (``LATENTQ_FAULTS={"decode_delay_s": ...}``, see
``latentq/worker/faults.py``) on a diffusers ``AutoencoderTiny`` shrunk to about
a millisecond of CPU per batch of 1x4x1x1 latents (8x8 PNGs): the decode uses no
CPU, as a GPU kernel leaves the host free, and everything around it is
latentq's real path (pop and lease, fenced start, encode on the worker's
threads, store, batched commit, heartbeats, recovery). So what the rate loses
as K grows is the coordination's cost, not this machine's cores.

For K in ``--workers`` (ascending; workers are added, never restarted), a
producer process keeps the model's queue ``--backlog`` batches per worker deep
for ``--warmup`` + ``--window`` s (``Client.submit_many`` of ``--max-batch``
latents, or ``POST /v1/batches`` through the API with ``--api``). jobs/s is the
number of jobs whose RQ record's ``ended_at`` falls in the window, over its
length; latency is ``ended_at - enqueued_at``; efficiency is rate(K) / (K x
rate(1)). Then every submitted job is checked: finished, one successful result
in RQ's history, one output object, counted once by the workers.

With ``--netns``, Redis, the API, the producer and each worker run in their own
network namespace, joined by veth pairs to a bridge (``bench/netns.py``), so
every Redis and HTTP round trip crosses a network stack; ``--delay-ms`` adds a
netem delay per packet. Without root or iproute2 it says why and runs on
loopback. Markdown to stdout, JSON to ``bench/results/scaleout-<date>[-netns].json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    default_work_dir,
    exit_on_sigterm,
    fmt,
    log,
    machine_summary,
    markdown_table,
    percentile,
    stop_processes,
    usable_cpus,
    write_models_file,
)
from netns import NetnsUnavailable, Network, netns_unavailable_reason

from latentq.local.stack import wait_for_workers, worker_command

__all__ = ["SIM_MODEL", "main", "sim_models"]

SIM_MODEL = "simgpu"
# A real diffusers AutoencoderTiny with 1-channel blocks and no residual blocks: still 8x upsampling
# (1x4x1x1 latents -> 8x8 images), about 1 ms of CPU for a batch of 8. Random weights.
SIM_CONFIG = {"latent_channels": 4, "encoder_block_out_channels": [1, 1, 1, 1], "decoder_block_out_channels": [1, 1, 1, 1],
              "num_encoder_blocks": [1, 1, 1, 1], "num_decoder_blocks": [0, 0, 0, 0]}  # fmt: skip


def sim_models() -> dict[str, dict[str, Any]]:
    return {SIM_MODEL: {"class": "AutoencoderTiny", "latent_channels": 4, "config": SIM_CONFIG,
                        "description": "scale-out bench: simulated GPU (a sleep per batch, see worker/faults.py)"}}  # fmt: skip


# --------------------------------------------------------------------------------------------- processes
class Cluster:
    """Redis, optionally the API, and the workers; on one host each when ``net`` is given."""

    def __init__(self, args: argparse.Namespace, work: Path, net: Network | None) -> None:
        self.args, self.work, self.net = args, work, net
        self.models_file = write_models_file(work / "models.toml", sim_models())
        self.store_dir = work / "store"
        self.store_dir.mkdir()
        self.redis_proc: subprocess.Popen | None = None
        self.embedded = None
        self.api_proc: subprocess.Popen | None = None
        self.api_url: str | None = None
        self.workers: list[tuple[str, subprocess.Popen]] = []
        self.producers: list[subprocess.Popen] = []

    def prefix(self, host: str) -> list[str]:
        """How a program is run on ``host``: in its namespace, at the chosen priority."""
        nice = ["nice", "-n", str(self.args.nice)] if self.args.nice else []
        return (self.net.prefix(host) if self.net else []) + nice

    def host(self, host: str) -> str:
        return self.net.address(host) if self.net else "127.0.0.1"

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "LATENTQ_REDIS_URL": self.redis_url, "LATENTQ_MODELS": str(self.models_file),
                "LATENTQ_STORE": str(self.store_dir), "LATENTQ_RECORD_TTL": "3600", "HF_HUB_OFFLINE": "1",
                "OMP_NUM_THREADS": "1", **extra}  # fmt: skip

    def _popen(self, host: str, args: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log_file = open(self.work / f"{name}.log", "wb")
        return subprocess.Popen(self.prefix(host) + args, env=env or self.env(), stdout=log_file,
                                stderr=subprocess.STDOUT, cwd=str(self.work))  # fmt: skip

    def start_redis(self) -> None:
        from redis import Redis

        from latentq.local.redis_server import EmbeddedRedis, free_port, redis_server_binary

        if self.net is None:
            self.embedded = EmbeddedRedis().start()
            self.redis_url, pid = self.embedded.url, self.embedded.pid
            renice(pid, self.args.nice)
        else:  # EmbeddedRedis binds 127.0.0.1 only: the same server, bound to its host's address
            port, address = free_port(), self.host("redis")
            (self.work / "redis").mkdir()
            self.redis_url = f"redis://{address}:{port}/0"
            self.redis_proc = self._popen("redis", [redis_server_binary(), "--port", str(port), "--bind", address,
                                                    "--save", "", "--appendonly", "no", "--protected-mode", "no",
                                                    "--dir", str(self.work / "redis")], "redis", env=dict(os.environ))  # fmt: skip
            pid = self.redis_proc.pid
        self.conn = Redis.from_url(self.redis_url, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.conn.ping()
                break
            except Exception:
                if time.monotonic() > deadline or (self.redis_proc and self.redis_proc.poll() is not None):
                    raise RuntimeError(f"redis-server did not answer at {self.redis_url}")
                time.sleep(0.05)
        self.redis_pid = pid

    def start_api(self) -> None:
        import httpx

        from latentq.local.redis_server import free_port

        port = free_port()
        self.api_url = f"http://{self.host('api')}:{port}"
        self.api_proc = self._popen("api", [sys.executable, "-m", "latentq", "--log-level", "WARNING", "api",
                                            "--host", self.host("api"), "--port", str(port)], "api")  # fmt: skip
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.api_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not come up:\n{self.log_tail('api')}")
            time.sleep(0.1)

    def spawn_worker(self) -> None:
        index = len(self.workers) + 1
        name = f"scale-w{index}"
        a = self.args
        faults = json.dumps({"decode_delay_s": a.batch_ms / 1000})
        args = worker_command([SIM_MODEL], max_batch=a.max_batch, max_wait_ms=a.max_wait_ms, torch_threads=1,
                              name=name, log_level="WARNING",
                              extra=["--encode-threads", str(a.encode_threads), "--no-previews"])  # fmt: skip
        self.workers.append((name, self._popen(f"w{index}", args, name, self.env(LATENTQ_FAULTS=faults))))

    def wait_workers(self, count: int, timeout: float = 180.0) -> None:
        def exited() -> None:
            for name, proc in self.workers:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {name} exited ({proc.returncode}):\n{self.log_tail(name)}")

        wait_for_workers(self.conn, SIM_MODEL, count, timeout, exited)

    def log_tail(self, name: str, chars: int = 2000) -> str:
        try:
            return (self.work / f"{name}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def close(self) -> None:
        stop_processes(self.producers, timeout=5)
        stop_processes([proc for _, proc in self.workers], timeout=20)
        stop_processes([p for p in (self.api_proc,) if p], timeout=10)
        if self.embedded is not None:
            self.embedded.stop()
        stop_processes([p for p in (self.redis_proc,) if p], timeout=10)


def renice(pid: int, nice: int) -> None:
    """Every thread of a running process to ``nice`` (setpriority on a pid reaches its main thread only)."""
    if not nice:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.setpriority(os.PRIO_PROCESS, int(task.name), nice)


# --------------------------------------------------------------------------------------------- the producer
def produce(spec: dict[str, Any]) -> None:
    """Keep the queue ``target`` jobs deep until ``duration`` s after the first submit (its own process)."""
    import httpx
    import torch
    from redis import Redis
    from rq import Queue

    from latentq import Client
    from latentq.core.wire import latent_to_bytes
    from latentq.state import keys

    conn = Redis.from_url(spec["redis_url"])
    queue_key = Queue(keys.queue_name(spec["model"]), connection=conn).key
    latents = torch.randn(spec["chunk"], 4, 1, 1, generator=torch.Generator().manual_seed(0))
    if spec["api_url"]:
        http = httpx.Client(base_url=spec["api_url"], timeout=30)
        body = latent_to_bytes(latents)

        def submit() -> list[str]:
            response = http.post("/v1/batches", params={"model": spec["model"], "output_format": spec["format"]},
                                 content=body, headers={"content-type": "application/octet-stream"})  # fmt: skip
            response.raise_for_status()
            return response.json()["job_ids"]
    else:
        client = Client()

        def submit() -> list[str]:
            return [job.id for job in client.submit_many(latents, model=spec["model"], output_format=spec["format"])]

    ids: list[str] = submit()  # warms the connections; the clock starts here
    t0 = time.time()
    print(json.dumps({"t0": t0}), flush=True)
    depth: list[tuple[float, int]] = []
    while (now := time.time()) < t0 + spec["duration"]:
        queued = int(conn.llen(queue_key))
        depth.append((round(now, 4), queued))
        if queued >= spec["target"]:
            time.sleep(0.005)
            continue
        for _ in range(math.ceil((spec["target"] - queued) / spec["chunk"])):
            ids += submit()
    Path(spec["out"]).write_text(json.dumps({"t0": t0, "t_end": time.time(), "ids": ids, "depth": depth}))


# --------------------------------------------------------------------------------------------- one K
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes, all their threads (/proc, no psutil needed)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all but idle, iowait and steal), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / _TICK


def worker_stats(cluster: Cluster) -> dict[str, int]:
    from latentq.state import keys

    totals = {"finished": 0, "decode_calls": 0, "decoded_jobs": 0}
    with cluster.conn.pipeline(transaction=False) as pipe:
        for name, _ in cluster.workers:
            pipe.hmget(keys.worker_stats_key(name), *totals)
        for row in pipe.execute():
            for key, value in zip(totals, row):
                totals[key] += int(value or 0)
    return totals


def job_records(cluster: Cluster, ids: list[str]) -> list[dict[str, Any]]:
    """Per job: status, enqueued/ended (unix s), successful results in RQ's history, output objects."""
    from rq.job import Job
    from rq.results import Result
    from rq.utils import utcparse

    from latentq.store.base import job_directory

    records = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        with cluster.conn.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                pipe.hmget(Job.key_for(job_id), "status", "enqueued_at", "ended_at")
                pipe.xrange(Result.get_key(job_id))
            raw = pipe.execute()
        for i, job_id in enumerate(chunk):
            status, enqueued, ended = (v.decode() if v else None for v in raw[2 * i])
            successes = sum(1 for _, fields in raw[2 * i + 1] if fields.get(b"type") == b"1")
            folder = cluster.store_dir / job_directory(job_id)
            objects = [p for p in folder.iterdir() if p.name != "job-record.json"] if folder.is_dir() else []
            records.append({"id": job_id, "status": status, "successes": successes, "objects": len(objects),
                            "enqueued": utcparse(enqueued).timestamp() if enqueued else None,
                            "ended": utcparse(ended).timestamp() if ended else None})  # fmt: skip
    return records


def run_k(cluster: Cluster, k: int) -> dict[str, Any]:
    from rq import Queue

    from latentq.state import keys

    a = cluster.args
    while len(cluster.workers) < k:
        cluster.spawn_worker()
    cluster.wait_workers(k)
    time.sleep(1.0)  # the new workers' first heartbeats and recoveries pass
    target = max(2 * a.max_batch, a.backlog * a.max_batch * k)
    spec = {"redis_url": cluster.redis_url, "api_url": cluster.api_url, "model": SIM_MODEL, "format": a.format,
            "chunk": a.max_batch, "target": target, "duration": a.warmup + a.window + 0.5}  # fmt: skip
    stats0 = worker_stats(cluster)
    producers, t0s = cluster.producers, []
    producers.clear()
    for index in range(a.producers):  # each keeps the queue at least target deep: together they do
        spec["out"] = str(cluster.work / f"produced-{k}-{index}.json")
        producers.append(subprocess.Popen(cluster.prefix("prod") + [sys.executable, __file__, "--produce", json.dumps(spec)],
                                          env=cluster.env(), stdout=subprocess.PIPE, cwd=str(cluster.work), text=True,
                                          stderr=open(cluster.work / f"prod-{k}-{index}.log", "wb")))  # fmt: skip
    for index, producer in enumerate(producers):
        line = producer.stdout.readline() if producer.stdout else ""
        if not line:
            producer.wait()
            raise RuntimeError(f"a producer failed:\n{cluster.log_tail(f'prod-{k}-{index}')}")
        t0s.append(json.loads(line)["t0"])
    t0 = max(t0s)  # every producer is submitting from here on
    roles = {"workers": [p.pid for _, p in cluster.workers], "redis": [cluster.redis_pid],
             "producer": [p.pid for p in producers], "api": [cluster.api_proc.pid] if cluster.api_proc else []}  # fmt: skip
    w0, w1 = t0 + a.warmup, t0 + a.warmup + a.window
    time.sleep(max(0.0, w0 - time.time()))
    roles["bench"] = [os.getpid()]
    busy0, cpu0 = machine_busy_seconds(), {role: cpu_seconds(pids) for role, pids in roles.items()}
    time.sleep(max(0.0, w1 - time.time()))
    cpu = {role: (cpu_seconds(pids) - cpu0[role]) / a.window for role, pids in roles.items()}
    # Other processes on this machine (other users' work) during the window: a disturbed row shows.
    foreign_cores = max(0.0, (machine_busy_seconds() - busy0) / a.window - sum(cpu.values()))
    produced: dict[str, list] = {"ids": [], "depth": []}
    for index, producer in enumerate(producers):
        if producer.wait(timeout=120) != 0:
            raise RuntimeError(f"a producer exited {producer.returncode}:\n{cluster.log_tail(f'prod-{k}-{index}')}")
        part = json.loads(Path(cluster.work / f"produced-{k}-{index}.json").read_text())
        produced["ids"] += part["ids"]
        produced["depth"] += part["depth"]
    ids = produced["ids"]

    # Every job ends (the workers drain the backlog), then each is counted.
    deadline = time.monotonic() + 120
    while worker_stats(cluster)["finished"] - stats0["finished"] < len(ids):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    time.sleep(0.5)  # a late duplicate, if any, would be written by now
    stats = {key: value - stats0[key] for key, value in worker_stats(cluster).items()}
    records = job_records(cluster, ids)
    in_window = [r for r in records if r["ended"] is not None and w0 <= r["ended"] < w1]
    rate = len(in_window) / a.window
    latencies = [(r["ended"] - r["enqueued"]) * 1000 for r in in_window if r["enqueued"] is not None]
    depth = [d for t, d in produced["depth"] if w0 <= t < w1]
    mean_batch = stats["decoded_jobs"] / stats["decode_calls"] if stats["decode_calls"] else float("nan")
    cycle_ms = k * mean_batch / rate * 1000 if rate else float("nan")
    checks = {
        "submitted": len(ids),
        "finished": sum(r["status"] == "finished" for r in records),
        "not_finished": [r["id"] for r in records if r["status"] != "finished"][:5],
        "successes_not_one": sum(r["successes"] != 1 for r in records),
        "objects_not_one": sum(r["objects"] != 1 for r in records),
        "worker_finished": stats["finished"],
        "worker_decoded": stats["decoded_jobs"],
        "queued_left": int(cluster.conn.llen(Queue(keys.queue_name(SIM_MODEL), connection=cluster.conn).key)),
    }
    checks["exactly_once"] = (checks["finished"] == len(ids) == stats["finished"] == stats["decoded_jobs"]
                              and not checks["successes_not_one"] and not checks["objects_not_one"])  # fmt: skip
    return {
        "k": k, "jobs_in_window": len(in_window), "jobs_per_s": rate,
        "ideal_jobs_per_s": k * a.max_batch * 1000 / a.batch_ms,
        "mean_batch": mean_batch, "cycle_ms": cycle_ms, "overhead_ms_per_batch": cycle_ms - a.batch_ms,
        "latency_ms": {"p50": percentile(latencies, 50), "p90": percentile(latencies, 90), "max": max(latencies, default=float("nan"))},
        "backlog_min": min(depth, default=0), "backlog_target": target,
        "cpu_cores": {role: round(value, 3) for role, value in cpu.items()}, "foreign_cores": round(foreign_cores, 3),
        "cpu_ms_per_job": {role: round(value / rate * 1000, 3) if rate else None for role, value in cpu.items()},
        "checks": checks,
    }  # fmt: skip


# --------------------------------------------------------------------------------------------- report
def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    base = next((r["jobs_per_s"] for r in rows if r["k"] == 1), None)
    for r in rows:
        r["efficiency"] = r["jobs_per_s"] / (r["k"] * base) if base else None
    table = markdown_table(
        ["K", "jobs/s", "ideal", "efficiency", "batch", "cycle ms", "idle ms/batch", "p50 ms", "p90 ms",
         "min backlog", "CPU cores (workers/redis/prod/api)", "other procs", "exactly once"],
        [[r["k"], fmt(r["jobs_per_s"], 1), fmt(r["ideal_jobs_per_s"], 1),
          fmt(r["efficiency"], 3) if r["efficiency"] is not None else "n/a", fmt(r["mean_batch"], 2),
          fmt(r["cycle_ms"], 1), fmt(r["overhead_ms_per_batch"], 1), fmt(r["latency_ms"]["p50"], 0),
          fmt(r["latency_ms"]["p90"], 0), r["backlog_min"],
          "/".join(fmt(r["cpu_cores"][k], 2) for k in ("workers", "redis", "producer", "api")),
          fmt(r["foreign_cores"], 2), "yes" if r["checks"]["exactly_once"] else "**NO**"] for r in rows],
    )  # fmt: skip
    lines = [f"# Scale-out, simulated GPU ({meta['date']})", "", f"`{meta['command']}`", "",
             f"- machine: {meta['machine']}", f"- network: {meta['network']}",
             f"- simulated GPU: {meta['batch_ms']:g} ms sleep per decode call, batches of up to {meta['max_batch']} "
             f"({meta['format']}, 8x8 px), {meta['encode_threads']} encode threads per worker; window {meta['window']:g} s "
             f"after {meta['warmup']:g} s warm-up; producer keeps {meta['backlog']} batches per worker queued"
             + (", submits through the API" if meta["api"] else ", submits with Client.submit_many"),
             "", table, "",
             "ideal = K x batch / batch time; cycle = one worker's time per batch (K x batch / jobs/s); idle = "
             "cycle - batch time: the simulated GPU's wait for the coordination; efficiency = jobs/s(K) / (K x jobs/s(1))."]  # fmt: skip
    last = rows[-1]
    if base and last["k"] > 1:
        lines.append(f"\nefficiency at K={last['k']}: {last['efficiency']:.3f} (target >= 0.9: "
                     f"{'met' if last['efficiency'] >= 0.9 else 'NOT met'})")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="1,2,4,8", help="the K values, comma-separated (default 1,2,4,8)")
    p.add_argument("--batch-ms", type=float, default=150.0, help="simulated decode time per batch (default 150)")
    p.add_argument("--max-batch", type=int, default=8, help="workers' --max-batch (default 8, the GPU default)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="workers' --max-wait-ms (default 5)")
    p.add_argument("--encode-threads", type=int, default=2, help="workers' --encode-threads (default 2)")
    p.add_argument("--format", default="png", help="output format (default png; uint8 or tensor: safetensors)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds after the first submit not measured (default 3)")
    p.add_argument("--window", type=float, default=15.0, help="measured seconds per K (default 15)")
    p.add_argument("--backlog", type=int, default=2, help="batches per worker kept queued (default 2)")
    p.add_argument("--producers", type=int, default=1, help="producer processes (default 1)")
    p.add_argument("--api", action="store_true", help="start the API; the producer submits through POST /v1/batches")
    p.add_argument("--netns", action="store_true", help="Redis, API, producer and each worker on their own network namespace")
    p.add_argument("--delay-ms", type=float, default=0.0, help="with --netns: netem delay per packet leaving a host")
    p.add_argument("--nice", type=int, default=0,
                   help="niceness of Redis, the API, the producer and the workers (e.g. -10 as root: a shared machine's "
                        "other work then waits for them, not they for it; default 0)")
    p.add_argument("--json", type=Path, help="JSON output (default bench/results/scaleout-<date>[-netns].json)")
    p.add_argument("--work-dir", default=default_work_dir(), help="stores and logs (default /dev/shm when present)")
    p.add_argument("--produce", help=argparse.SUPPRESS)  # internal: the producer process
    args = p.parse_args(argv)
    args.ks = sorted({int(k) for k in args.workers.split(",")})
    if args.ks[0] < 1 or args.batch_ms <= 0 or args.window <= 0:
        p.error("K >= 1, --batch-ms > 0 and --window > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.produce:
        produce(json.loads(args.produce))
        return 0
    exit_on_sigterm()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C cleans up even where SIGINT came ignored
    command = "python bench/scaleout.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    network, net = "loopback (127.0.0.1)", None
    if args.netns:
        reason = netns_unavailable_reason()
        if reason:
            log(f"--netns: network namespaces are not available ({reason}); running on loopback instead")
            network = f"loopback (--netns unavailable: {reason})"
        else:
            hosts = ["redis", "api", "prod"] + [f"w{i}" for i in range(1, max(args.ks) + 1)]
            net = Network(hosts, delay_ms=args.delay_ms)
            network = (f"network namespaces: Redis, API, producer and each worker on its own host, veth pairs to a "
                       f"bridge ({net.subnet}.0/24)" + (f", netem {args.delay_ms:g} ms per packet" if args.delay_ms else ""))  # fmt: skip
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="latentq-scaleout-", dir=args.work_dir) as tmp:
        cluster = Cluster(args, Path(tmp), net)
        try:
            if net is not None:
                net.open()
            cluster.start_redis()
            if args.api:
                cluster.start_api()
            for k in args.ks:
                log(f"K={k}: starting workers, then {args.warmup:g} + {args.window:g} s of load")
                rows.append(run_k(cluster, k))
                r = rows[-1]
                log(f"K={k}: {r['jobs_per_s']:.1f} jobs/s (ideal {r['ideal_jobs_per_s']:.1f}), batch {r['mean_batch']:.2f}, "
                    f"exactly once: {r['checks']['exactly_once']}")  # fmt: skip
        except NetnsUnavailable as exc:
            log(f"--netns: could not build the network ({exc})")
            return 2
        except KeyboardInterrupt:
            log("interrupted: processes stopped, namespaces removed")
            return 130
        finally:
            cluster.close()
            if net is not None:
                net.close()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command, "machine": machine_summary(),
            "cpus": usable_cpus(), "network": network, "netns": net is not None, **{k: getattr(args, k) for k in (
                "batch_ms", "max_batch", "max_wait_ms", "encode_threads", "format", "warmup", "window", "backlog",
                "api", "delay_ms", "nice", "producers")}}  # fmt: skip
    text = report(rows, meta)
    print(text, flush=True)
    path = args.json or Path(__file__).resolve().parent / "results" / (
        f"scaleout-{time.strftime('%Y-%m-%d')}{'-netns' if net is not None else ''}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": rows, "markdown": text}, indent=2, default=str) + "\n")
    log(f"wrote {path}")
    return 0 if all(r["checks"]["exactly_once"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
