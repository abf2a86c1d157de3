"""Chaos test: SIGKILL decode workers mid-batch and check that no job is lost or decoded twice.

    python bench/chaos.py [--jobs 500] [--workers 3] [--kills 5] [--kill-interval 3.0]
                          [--timeout 300] [--seed 0] [--decode-delay 0.2]

A private Redis, W ``python -m latentq worker`` processes (with a fault-injected
decode delay so batches last long enough to be killed mid-flight), and N small
TAEF2 jobs submitted in chunks across the kill window. Every ``--kill-interval``
seconds a random live worker gets SIGKILL and a replacement starts. The survivors'
heartbeat threads run RQ's started-registry cleanup, which re-queues the killed
worker's jobs once their execution TTL lapses (jobs carry Retry(max=5) here).

At the end it counts finished / failed / lost (never final, or finished with its
result object missing from the store) / duplicated (more than one successful RQ
result) jobs. Exit status 0 only when lost == duplicated == failed == 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from datetime import timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MAX_RETRIES = "5"
os.environ["LATENTQ_MAX_RETRIES"] = MAX_RETRIES  # read by Settings.from_env (producer) and inherited by workers

from common import BenchStack, job_statuses, markdown_table, taef2_models  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--kill-interval", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds from the first submit to give up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=50, help="jobs per submit_many call")
    parser.add_argument("--decode-delay", type=float, default=0.2, help="LATENTQ_FAULTS decode_delay_s of the workers")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--taef2", default=None, help="TAEF2 weights directory (default: /work/shared/models/taef2)")
    return parser.parse_args(argv)


def _ts(value) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def in_flight_of(conn, job_ids: list[str], worker_name: str) -> int:
    """Jobs RQ records as started by ``worker_name`` (right after its SIGKILL: the ones it abandoned)."""
    with conn.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(f"rq:job:{job_id}", "status", "worker_name")
        rows = pipe.execute()
    return sum(1 for status, name in rows if status == b"started" and name == worker_name.encode())


def run(args: argparse.Namespace) -> int:
    import torch
    from rq import Worker as RQWorker
    from rq.job import Job as RQJob
    from rq.results import Result
    from rq.serializers import JSONSerializer

    from latentq.errors import JobNotFound

    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    models = taef2_models(args.taef2) if args.taef2 else taef2_models()
    worker_env = {
        "LATENTQ_FAULTS": json.dumps({"decode_delay_s": args.decode_delay}),
        "LATENTQ_MAX_RETRIES": MAX_RETRIES,
    }
    stack = BenchStack(models, worker_env=worker_env)
    serial = 0

    def spawn():
        nonlocal serial
        serial += 1
        return stack.spawn_worker(f"chaos-w{serial}", max_batch=args.max_batch, log_level="WARNING")

    try:
        stack.start()
        for _ in range(args.workers):
            spawn()
        waited = stack.wait_for_workers(args.workers, timeout=180)
        print(f"{args.workers} workers registered in {waited:.1f} s", flush=True)
        client = stack.client()
        assert client.settings.max_retries == int(MAX_RETRIES), client.settings.max_retries

        # --- the schedule: submit chunks across the kill window, kill every interval ----------
        chunks = [min(args.chunk, args.jobs - i) for i in range(0, args.jobs, args.chunk)]
        kill_window = max(args.kill_interval * args.kills, 1.0)
        submit_at = [i * kill_window / max(len(chunks), 1) for i in range(len(chunks))]
        kill_at = [args.kill_interval * (k + 1) for k in range(args.kills)]
        job_ids: list[str] = []
        kills: list[dict] = []
        started = time.monotonic()
        deadline = started + args.timeout
        next_chunk = 0
        while next_chunk < len(chunks) or len(kills) < args.kills:
            elapsed = time.monotonic() - started
            if next_chunk < len(chunks) and elapsed >= submit_at[next_chunk]:
                latents = torch.randn(chunks[next_chunk], 32, 4, 4)
                job_ids += [job.id for job in client.submit_many(latents, model="taef2", output_format="png")]
                next_chunk += 1
                continue
            if len(kills) < args.kills and elapsed >= kill_at[len(kills)]:
                # Only workers that have registered (so are taking jobs): a booting one has nothing to lose.
                registered = {w.name for w in RQWorker.all(connection=stack.conn)}
                live = [w for w in stack.workers if w.process.poll() is None and w.name in registered]
                if not live:
                    time.sleep(0.1)
                    continue
                victim = rng.choice(live)
                victim.process.kill()  # SIGKILL
                victim.process.wait()
                kill_time = time.time()
                abandoned = in_flight_of(stack.conn, job_ids, victim.name)
                stack.workers.remove(victim)
                replacement = spawn()
                kills.append({"t": round(elapsed, 1), "killed": victim.name, "abandoned": abandoned,
                              "replacement": replacement.name, "wall": kill_time})  # fmt: skip
                print(f"[{elapsed:5.1f} s] SIGKILL {victim.name} with {abandoned} started job(s); "
                      f"started {replacement.name}", flush=True)  # fmt: skip
                continue
            upcoming = [submit_at[next_chunk]] if next_chunk < len(chunks) else []
            upcoming += [kill_at[len(kills)]] if len(kills) < args.kills else []
            time.sleep(max(0.0, min(min(upcoming) - elapsed, 0.05)))
        print(f"[{time.monotonic() - started:5.1f} s] submitted {len(job_ids)} jobs, {len(kills)} kills", flush=True)

        # --- wait for every job to end ---------------------------------------------------------
        pending = set(job_ids)
        infos = {}
        last_report = 0.0
        while pending and time.monotonic() < deadline:
            ids = list(pending)
            # A cheap pipelined look at RQ's status first; the Client's view only for those that look done.
            for job_id, raw in zip(ids, job_statuses(stack.conn, ids)):
                if raw in (b"queued", b"started", b"scheduled", b"deferred"):
                    continue
                try:
                    info = client.job_info(job_id)
                except JobNotFound:
                    continue
                if info.status.is_final:
                    infos[job_id] = info
                    pending.discard(job_id)
            now = time.monotonic()
            if pending and now - last_report >= 10:
                last_report = now
                print(f"[{now - started:5.1f} s] {len(pending)} job(s) not final yet", flush=True)
            if pending:
                time.sleep(0.5)
        all_final_after = time.monotonic() - started
        for job_id in pending:  # a last look at what never ended
            try:
                infos[job_id] = client.job_info(job_id)
            except JobNotFound:
                infos[job_id] = None

        # --- count -----------------------------------------------------------------------------
        # Dequeued (moved to RQ's intermediate queue) but never marked started: a worker died in between.
        intermediate = set()
        for queue in (client.queue("taef2"), client.queue("taef2", "high")):
            intermediate |= {i.decode() for i in stack.conn.lrange(queue.intermediate_queue_key, 0, -1)}
        finished = failed = lost = duplicated = 0
        missing_objects = never_final = 0
        max_starts = 0
        last_end = None
        problems: list[str] = []
        for job_id in job_ids:
            info = infos.get(job_id)
            try:
                rq_job = RQJob.fetch(job_id, connection=stack.conn, serializer=JSONSerializer)
            except Exception:
                rq_job = None
            if rq_job is not None:
                successes = sum(1 for r in rq_job.results() if r.type == Result.Type.SUCCESSFUL)
                if successes > 1:
                    duplicated += 1
                    problems.append(f"{job_id}: {successes} successful results")
                retries_left = rq_job.retries_left if rq_job.retries_left is not None else int(MAX_RETRIES)
                max_starts = max(max_starts, 1 + int(MAX_RETRIES) - retries_left)
                end = _ts(rq_job.ended_at)
                if end is not None and (last_end is None or end > last_end):
                    last_end = end
            if info is None or not info.status.is_final:
                lost += 1
                never_final += 1
                where = " (in RQ's intermediate queue)" if job_id in intermediate else ""
                problems.append(f"{job_id}: {'missing' if info is None else info.status.value} at the end{where}")
                continue
            if info.status.value == "finished":
                absent = [r.key for r in info.results if not client.store.exists(r.key)]
                if absent or not info.results:
                    lost += 1
                    missing_objects += 1
                    problems.append(f"{job_id}: finished but result object missing {absent or '(no results)'}")
                else:
                    finished += 1
            else:
                failed += 1
                problems.append(f"{job_id}: {info.status.value}: {info.error}")

        last_kill = kills[-1]["wall"] if kills else None
        recovery = round(last_end - last_kill, 1) if (last_end is not None and last_kill is not None) else None
        summary = {
            "submitted": len(job_ids),
            "finished": finished,
            "failed": failed,
            "lost": lost,
            "duplicated": duplicated,
            "kills": len(kills),
            "abandoned_at_kills": sum(k["abandoned"] for k in kills),
            "last_kill_to_last_done_s": recovery,
            "max_starts_per_job": max_starts,
            "stuck_in_intermediate_queue": len(intermediate & set(job_ids)),
            "all_final_after_s": round(all_final_after, 1),
            "workers": args.workers,
            "decode_delay_s": args.decode_delay,
            "seed": args.seed,
        }
        ok = lost == 0 and duplicated == 0 and failed == 0
        summary["ok"] = ok

        print()
        print(markdown_table(
            ["t (s)", "killed", "started jobs abandoned", "replacement"],
            [[k["t"], k["killed"], k["abandoned"], k["replacement"]] for k in kills],
        ))  # fmt: skip
        print()
        print(markdown_table(
            ["submitted", "finished", "failed", "lost", "duplicated", "kills", "abandoned",
             "last kill -> last done (s)", "max starts/job"],
            [[len(job_ids), finished, failed, f"{lost} ({never_final} not final, {missing_objects} no object)",
              duplicated, len(kills), summary["abandoned_at_kills"], recovery, max_starts]],
        ))  # fmt: skip
        if problems:
            print(f"\n{len(problems)} problem(s), first 10:")
            for line in problems[:10]:
                print("  " + line)
        print()
        print(json.dumps(summary))
        return 0 if ok else 1
    finally:
        stack.stop_workers(timeout=10)
        stack.close()


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
