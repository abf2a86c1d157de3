"""What operators see: /metrics, why a job waits, and the pixel budget of batches."""

from __future__ import annotations

import re

import httpx
import pytest
import torch
from helpers import wait_until

from latentq import Client

pytestmark = pytest.mark.timeout(180)


def metric(text: str, name: str, **labels: str) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(label_text)}\}} (\S+)$", text, re.M)
    assert match, f"{name}{{{label_text}}} not in metrics"
    return float(match.group(1))


def test_metrics_count_what_happened(procs, redis_conn):
    client = Client()
    finished = client.submit_many(torch.randn(3, 32, 4, 4), model="taef2")
    broken = client.submit(torch.randn(32, 4, 4), model="taef2")
    redis_conn.set(f"latentq:latent:{broken.id}", b"not a tensor")
    canceled = client.submit(torch.randn(32, 4, 4), model="taef2")
    client.cancel(canceled.id)
    api = procs.api()
    before = httpx.get(f"{api}/metrics").text
    assert metric(before, "latentq_queue_depth", model="taef2") == 4
    assert metric(before, "latentq_workers_alive", model="taef2") == 0

    procs.worker("taef2", max_batch=8, max_wait_ms=100)
    for job in finished:
        job.wait(60)
    wait_until(lambda: broken.status().value == "failed", 30)
    text = httpx.get(f"{api}/metrics").text
    assert metric(text, "latentq_jobs_total", model="taef2", status="finished") == 3
    assert metric(text, "latentq_jobs_total", model="taef2", status="failed") == 1
    assert metric(text, "latentq_jobs_total", model="taef2", status="canceled") == 1
    assert metric(text, "latentq_queue_depth", model="taef2") == 0
    assert metric(text, "latentq_workers_alive", model="taef2") == 1
    assert metric(text, "latentq_batch_size_count", model="taef2") == 1  # the 3 good jobs in one call
    assert metric(text, "latentq_batch_size_sum", model="taef2") == 3
    assert metric(text, "latentq_batch_size_bucket", model="taef2", le="2") == 0
    assert metric(text, "latentq_batch_size_bucket", model="taef2", le="4") == 1
    assert metric(text, "latentq_decode_seconds_count", model="taef2") == 1
    assert metric(text, "latentq_job_latency_seconds_count", model="taef2") == 3
    assert metric(text, "latentq_store_seconds_count", model="taef2") == 3
    assert metric(text, "latentq_jobs_total", model="sd15", status="finished") == 0


def test_a_job_no_live_worker_serves_says_so(procs, env):
    api = procs.api()
    job = Client().submit(torch.randn(4, 8, 8), model="sd15")
    body = httpx.get(f"{api}/v1/jobs/{job.id}").json()
    assert body["status"] == "queued" and body["workers"] == 0
    assert "no live worker serves model 'sd15'" in body["waiting_reason"]


def test_pixel_budget_splits_large_latents_into_more_decode_calls(procs, redis_conn):
    budget = 2 * 64 * 64  # two 64x64 images per decode call
    procs.worker("taef2", name="budget", max_batch=8, max_wait_ms=200,
                 extra=("--max-batch-pixels", str(budget)))  # fmt: skip
    client = Client()

    def calls() -> int:
        return int(redis_conn.hget("latentq:worker-stats:budget", "decode_calls") or 0)

    small = client.submit_many(torch.randn(4, 32, 4, 4), model="taef2")  # 32x32 each: 4 fit in one call
    for job in small:
        job.wait(60)
    small_calls = calls()
    large = client.submit_many(torch.randn(4, 32, 8, 8), model="taef2")  # 64x64 each: 2 per call
    for job in large:
        job.wait(60)
    large_calls = calls() - small_calls
    assert small_calls == 1 and large_calls == 2


def test_json_logs_carry_job_and_batch_ids(procs):
    import json
    from pathlib import Path

    worker = procs.spawn("--log-json", "worker", "--model", "taef2", name="jsonworker")
    procs.wait_for_worker(worker)
    jobs = Client().submit_many(torch.randn(2, 32, 4, 4), model="taef2")
    for job in jobs:
        job.wait(60)

    def finished_line():
        for line in Path(worker.log_path).read_text().splitlines():
            entry = json.loads(line) if line.startswith("{") else {}
            if entry.get("job_id") == jobs[0].id and "finished" in entry.get("message", ""):
                return entry

    entry = wait_until(finished_line, 10)
    assert entry["batch_id"] == jobs[0].batch_id and entry["model"] == "taef2" and entry["level"] == "info"
