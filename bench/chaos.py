"""Chaos: jobs through `latentq up` while its workers are killed and frozen and Redis crashes.

    python bench/chaos.py [--jobs 300] [--workers 3] [--heartbeat 2] [--redis-down 5] [--seed 0]

A private redis-server (AOF, fsync always: what it acknowledged survives a
SIGKILL) and one `latentq up` process with W workers, which restarts workers
that die. Nothing is restarted by hand but Redis. The schedule:

1. a burst of jobs, then two workers SIGKILLed at the same instant;
2. as soon as `up` has started their replacements (still loading the model), two SIGKILLed again;
3. more jobs; one worker SIGSTOPped for longer than the dead-worker bound (3 heartbeats), then SIGCONT;
4. redis-server SIGKILLed mid-run and started again on the same port and AOF directory;
5. the last jobs, then everything must end.

Counted per job: finished, failed, lost (never final, or its output missing),
duplicated (more than one successful result in RQ's result history, more than
one done message, or more output objects than the format makes), wrong (the
image differs from the in-process decode of its latent by more than 1 per 8-bit
channel), and per fault the time from the fault to the end of the last job it
held. Exit status 0 only when lost == duplicated == failed == wrong == 0.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TAEF2 = REPO.parent / "shared" / "models" / "taef2"

__all__ = ["main", "parse_args", "run"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--heartbeat", type=float, default=2.0,
                        help="workers' heartbeat (s); the dead-worker bound is max(10, 3x this)")  # fmt: skip
    parser.add_argument("--redis-down", type=float, default=5.0, help="seconds redis-server stays down")
    parser.add_argument("--decode-delay", type=float, default=0.2, help="LATENTQ_FAULTS decode_delay_s")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=400.0, help="seconds from the first submit to give up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--taef2", type=Path, default=TAEF2)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    return parser.parse_args(argv)


def children(pid: int) -> set[int]:
    """Child processes of ``pid`` (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            continue
    return found


class DoneMessages:
    """Counts the done messages per job (``latentq:done:<id>``), reconnecting across Redis restarts."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.counts: Counter[str] = Counter()
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from redis import Redis

        from latentq.state import keys

        prefix = keys.job_done_channel("")
        while not self._stop.is_set():
            try:
                connection = Redis.from_url(self.url, socket_timeout=1)
                pubsub = connection.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(prefix + "*")
                self.subscribed.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message["type"] == "pmessage":
                        self.counts[message["channel"].decode().removeprefix(prefix)] += 1
            except Exception:
                time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(3)


def ask_api_during_outage(api: str, job_id: str) -> dict[str, str]:
    """What the API answers while Redis is down: "<status> <error type>" per route (503 JSON expected)."""
    import httpx
    import torch

    from latentq.core.wire import latent_to_bytes

    body = latent_to_bytes(torch.randn(1, 32, 4, 4))
    requests = {
        "GET /healthz": ("GET", "/healthz", None),
        "GET /v1/jobs/{id}": ("GET", f"/v1/jobs/{job_id}", None),
        "GET /v1/jobs/{id}?wait=1": ("GET", f"/v1/jobs/{job_id}?wait=1", None),
        "POST /v1/jobs": ("POST", "/v1/jobs?model=taef2", body),
    }
    answers = {}
    with httpx.Client(base_url=api, timeout=30) as http:
        for name, (method, path, content) in requests.items():
            try:
                response = http.request(method, path, content=content)
                kind = response.json().get("error", {}).get("type") if response.headers.get(
                    "content-type", "").startswith("application/json") else response.headers.get("content-type")
                answers[name] = f"{response.status_code} {kind}"
            except Exception as exc:
                answers[name] = f"no answer: {type(exc).__name__}"
    return answers


def run(args: argparse.Namespace, log=print) -> dict:
    import numpy as np
    import torch
    from PIL import Image
    from redis import Redis
    from rq import Worker as RQWorker
    from rq.job import Job as RQJob
    from rq.results import Result
    from rq.serializers import JSONSerializer

    from latentq import Client
    from latentq.errors import Unavailable
    from latentq.local.redis_server import EmbeddedRedis, free_port
    from latentq.local.stack import wait_for_workers
    from latentq.models.loader import load_model, to_uint8
    from latentq.models.registry import load_registry

    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix="latentq-chaos-"))
    models_file = work / "models.toml"
    models_file.write_text(f'[models.taef2]\nsource = "{args.taef2}"\n')
    redis = EmbeddedRedis(appendonly=True, appendfsync="always").start()
    env = {**os.environ, "LATENTQ_REDIS_URL": redis.url, "LATENTQ_MODELS": str(models_file),
           "LATENTQ_STORE": str(work / "store"), "LATENTQ_MAX_RETRIES": "5", "LATENTQ_RECORD_TTL": "3600",
           "LATENTQ_FAULTS": json.dumps({"decode_delay_s": args.decode_delay}), "PYTHONUNBUFFERED": "1"}  # fmt: skip
    os.environ.update({k: env[k] for k in ("LATENTQ_REDIS_URL", "LATENTQ_MODELS", "LATENTQ_STORE", "LATENTQ_MAX_RETRIES",
                                           "LATENTQ_RECORD_TTL")})  # fmt: skip
    up_log = open(work / "up.log", "wb")
    api = f"http://127.0.0.1:{free_port()}"
    up = subprocess.Popen([sys.executable, "-m", "latentq", "--log-level", "WARNING", "up", "--workers",
                           str(args.workers), "--port", api.rsplit(":", 1)[1], "--max-batch", str(args.max_batch),
                           "--heartbeat-interval", str(args.heartbeat)],
                          env=env, stdout=up_log, stderr=subprocess.STDOUT)  # fmt: skip
    bound = max(10.0, 3 * args.heartbeat)
    conn = Redis.from_url(redis.url)
    done = DoneMessages(redis.url)
    client = Client()
    latents: dict[str, torch.Tensor] = {}
    faults: list[dict] = []
    started = time.monotonic()

    def at() -> float:
        return round(time.monotonic() - started, 1)

    def submit(count: int) -> None:
        batch = torch.randn(count, 32, 4, 4)
        while True:
            try:
                jobs = client.submit_many(batch, model="taef2", output_format="png")
                break
            except Unavailable:  # not accepted: Redis is restarting
                time.sleep(0.2)
        latents.update({job.id: latent for job, latent in zip(jobs, batch)})
        log(f"[{at():6.1f} s] submitted {count} jobs ({len(latents)} in all)")

    def registered_workers() -> dict[int, str]:
        """Live workers of `up` that registered (a killed one stays registered until its key expires)."""
        alive = children(up.pid)
        return {w.pid: w.name for w in RQWorker.all(connection=conn) if w.pid in alive}

    def held_by(names: set[str]) -> list[str]:
        ids = list(latents)
        with conn.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(f"rq:job:{job_id}", "status", "worker_name")
            rows = pipe.execute()
        return [i for i, (st, name) in zip(ids, rows) if st == b"started" and (name or b"").decode() in names]

    def busy_worker() -> tuple[int, str]:
        """A live worker that holds started jobs now (waits for one)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = registered_workers()
            busy = [(pid, name) for pid, name in sorted(workers.items()) if held_by({name})]
            if busy:
                return rng.choice(busy)
            time.sleep(0.02)
        raise RuntimeError("no worker took a job within 60 s")

    def kill_two(reason: str, pids: list[int]) -> None:
        names = registered_workers()
        victims = pids[:2]
        for pid in victims:  # the same instant, as far as two syscalls go
            os.kill(pid, signal.SIGKILL)
        held = held_by({names[p] for p in victims if p in names})
        faults.append({"fault": f"SIGKILL x2 ({reason})", "at": time.time(), "jobs": held})
        log(f"[{at():6.1f} s] SIGKILL {victims} ({reason}): {len(held)} started job(s) in hand")

    try:
        wait_for_workers(conn, "taef2", args.workers, 240)
        deadline = time.monotonic() + 60  # and `up` has finished starting (it says so)
        while b"latentq is up" not in (work / "up.log").read_bytes():
            if up.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("latentq up did not come up: " + (work / "up.log").read_text()[-3000:])
            time.sleep(0.1)
        done.subscribed.wait(10)
        log(f"[{at():6.1f} s] {args.workers} workers up")
        quarter = max(1, args.jobs // 5)

        # 1. a burst, then a double kill
        submit(quarter)
        busy_worker()
        before = children(up.pid)
        workers = registered_workers()
        busy = [pid for pid, name in sorted(workers.items()) if held_by({name})]
        kill_two("after a burst", (busy + [p for p in sorted(workers) if p not in busy])[:2])

        # 2. the replacements, killed while they load their model
        deadline = time.monotonic() + 30
        while len(fresh := children(up.pid) - before) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        kill_two("replacements loading the model", rng.sample(sorted(fresh), 2))
        submit(quarter)

        # 3. a worker frozen past the dead-worker bound
        deadline = time.monotonic() + 240
        while len(registered_workers()) < args.workers and time.monotonic() < deadline:
            time.sleep(0.2)
        submit(quarter)
        frozen, name = busy_worker()
        os.kill(frozen, signal.SIGSTOP)
        held = held_by({name})
        faults.append({"fault": f"SIGSTOP {bound + 5:.0f} s", "at": time.time(), "jobs": held})
        log(f"[{at():6.1f} s] SIGSTOP {frozen}: {len(held)} started job(s) in hand")
        time.sleep(bound + 5)
        os.kill(frozen, signal.SIGCONT)
        log(f"[{at():6.1f} s] SIGCONT {frozen}")

        # 4. Redis crashes mid-run
        submit(quarter)
        busy_worker()
        workers_before = set(registered_workers())
        held = held_by(set(registered_workers().values()))
        redis.kill()
        faults.append({"fault": f"redis-server SIGKILL, {args.redis_down:.0f} s down", "at": time.time(), "jobs": held})
        log(f"[{at():6.1f} s] redis-server SIGKILL with {len(held)} started job(s)")
        outage_ends = time.monotonic() + args.redis_down
        api_answers = ask_api_during_outage(api, next(iter(latents)))
        log(f"[{at():6.1f} s] the API during the outage: {api_answers}")
        time.sleep(max(0.0, outage_ends - time.monotonic()))
        redis.start()
        log(f"[{at():6.1f} s] redis-server started again")

        # 5. the rest
        submit(args.jobs - 4 * quarter)
        pending = set(latents)
        exited_in_outage = len(workers_before - children(up.pid))
        infos: dict = {}
        give_up = started + args.timeout
        while pending and time.monotonic() < give_up:
            for job_id in list(pending):
                try:
                    info = client.job_info(job_id)
                except Exception:
                    continue
                if info.status.is_final:
                    infos[job_id] = info
                    pending.discard(job_id)
            time.sleep(0.5)
        log(f"[{at():6.1f} s] {len(infos)} of {len(latents)} jobs ended")
        time.sleep(1.0)  # late duplicates, if any, would show up now

        # --- count ------------------------------------------------------------------------
        model = load_model(load_registry(str(models_file)).get("taef2"), "cpu")
        ended_at: dict[str, float] = {}
        counts = Counter()
        problems: list[str] = []
        for job_id, latent in latents.items():
            info = infos.get(job_id)
            if info is None:
                counts["lost"] += 1
                problems.append(f"{job_id}: never ended")
                continue
            rq_job = RQJob.fetch(job_id, connection=conn, serializer=JSONSerializer)
            successes = sum(1 for r in rq_job.results() if r.type == Result.Type.SUCCESSFUL)
            objects = [p for p in (work / "store" / job_id).glob("*") if p.name != "job-record.json"]
            dup = successes > 1 or done.counts[job_id] > 1 or len(objects) > 1
            if dup:
                counts["duplicated"] += 1
                problems.append(f"{job_id}: {successes} results, {done.counts[job_id]} done messages, "
                                f"{len(objects)} objects")  # fmt: skip
            if info.status.value != "finished":
                counts["failed"] += 1
                problems.append(f"{job_id}: {info.status.value}: {info.error}")
                continue
            if not objects:
                counts["lost"] += 1
                problems.append(f"{job_id}: finished without its output")
                continue
            counts["finished"] += 1
            ended_at[job_id] = rq_job.ended_at.timestamp() if rq_job.ended_at else time.time()
            got = np.asarray(Image.open(io.BytesIO(objects[0].read_bytes())).convert("RGB")).astype(int)
            with torch.no_grad():  # the in-process decode of the same latent, alone
                want = to_uint8(model.decode(latent[None].float())).numpy().astype(int)[0]
            if got.shape != want.shape or np.abs(got - want).max() > 1:
                counts["wrong"] += 1
                problems.append(f"{job_id}: image differs from the in-process decode")
        for fault in faults:
            ends = [ended_at[j] for j in fault["jobs"] if j in ended_at]
            fault["held"] = len(fault["jobs"])
            fault["extra_wait_s"] = round(max(ends) - fault["at"], 1) if ends else None
        summary = {
            "submitted": len(latents), "finished": counts["finished"], "failed": counts["failed"],
            "lost": counts["lost"], "duplicated": counts["duplicated"], "wrong_image": counts["wrong"],
            "longest_extra_wait_s": max((f["extra_wait_s"] or 0 for f in faults), default=0),
            "dead_worker_bound_s": bound, "workers": args.workers, "seed": args.seed,
            "faults": [{k: f[k] for k in ("fault", "held", "extra_wait_s")} for f in faults],
            # seen by a listener that reconnects after the Redis crash (it can miss some, never add any)
            "done_messages": sum(done.counts[j] for j in latents),
            "workers_exited_in_redis_outage": exited_in_outage,
            "api_during_outage": api_answers,
        }  # fmt: skip
        summary["ok"] = all(summary[k] == 0 for k in ("failed", "lost", "duplicated", "wrong_image",
                                                       "workers_exited_in_redis_outage")) and all(
            answer == "503 Unavailable" for answer in api_answers.values())  # fmt: skip
        log("\n| fault | started jobs held | fault -> last of them done (s) |\n| --- | --- | --- |")
        for f in summary["faults"]:
            log(f"| {f['fault']} | {f['held']} | {f['extra_wait_s']} |")
        log("\n| submitted | finished | failed | lost | duplicated | wrong image | longest extra wait (s) |")
        log("| --- | --- | --- | --- | --- | --- | --- |")
        log(f"| {summary['submitted']} | {summary['finished']} | {summary['failed']} | {summary['lost']} | "
            f"{summary['duplicated']} | {summary['wrong_image']} | {summary['longest_extra_wait_s']} |")  # fmt: skip
        for line in problems[:10]:
            log("  " + line)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
        return summary
    finally:
        done.close()
        client.close()
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            for pid in children(up.pid):
                os.kill(pid, signal.SIGKILL)
        redis.stop()
        up_log.close()


def main(argv: list[str] | None = None) -> int:
    summary = run(parse_args(argv))
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
