"""The whole path with real processes: producer -> Redis/RQ -> batching worker -> store -> API."""

from __future__ import annotations

import subprocess
import sys
import threading

import httpx
import numpy as np
import pytest
import torch
from helpers import decode_png, photo_latent, psnr, reference_pixels, taef2, wait_until

from latentq import Client, JobStatus
from latentq.core.wire import latent_to_bytes


@pytest.mark.timeout(180)
def test_photo_through_the_http_api(procs):
    procs.worker("taef2")
    api = procs.api()
    latent, original = photo_latent("chelsea.png")

    response = httpx.post(f"{api}/v1/jobs", params={"model": "taef2"}, content=latent_to_bytes(latent))
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["status_url"].endswith(body["id"])

    status = wait_until(lambda: (s := httpx.get(body["status_url"]).json())["status"] == "finished" and s, 60)
    (result,) = status["results"]
    assert result["content_type"] == "image/png"
    assert (result["width"], result["height"]) == (original.shape[1], original.shape[0])
    png = httpx.get(result["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert result["bytes"] == len(png.content)
    assert psnr(decode_png(png.content), original) >= 28.0


@pytest.mark.timeout(180)
# 0: a CPU worker's default, results encoded in line; 2: a GPU worker's way, threads encode while it decodes.
@pytest.mark.parametrize("encode_threads", ["0", "2"])
def test_sixteen_waiting_jobs_decode_in_two_calls_and_match_single_decodes(procs, redis_conn, encode_threads):
    client = Client()
    generator = torch.Generator().manual_seed(0)
    latents = [torch.randn(32, 12, 16, generator=generator) for _ in range(16)]
    jobs = [client.submit(latent, model="taef2") for latent in latents]
    assert client.queue("taef2").count == 16

    # No pixel budget: this is about the count (tests/test_observability.py covers the budget).
    procs.worker("taef2", max_batch=8, max_wait_ms=50, name="batcher",
                 extra=("--max-batch-pixels", "0", "--encode-threads", encode_threads))  # fmt: skip
    results = [job.wait(timeout=120) for job in jobs]

    stats = redis_conn.hgetall("latentq:worker-stats:batcher")
    assert int(stats[b"decode_calls"]) == 2
    assert int(stats[b"decoded_jobs"]) == 16
    model = taef2()
    for job, latent, (result,) in zip(jobs, latents, results):
        assert job.info().batch_size == 8
        got = decode_png(job.read())
        assert (result.width, result.height) == (128, 96)
        diff = np.abs(got.astype(int) - reference_pixels(model, latent).astype(int)).max()
        assert diff <= 1


@pytest.mark.timeout(240)
def test_two_hundred_jobs_from_four_threads(procs, redis_conn, env):
    procs.worker("taef2", max_batch=16, name="bulk")
    jobs, errors = [], []
    lock = threading.Lock()

    def produce(seed: int) -> None:
        try:
            client = Client()
            generator = torch.Generator().manual_seed(seed)
            mine = [client.submit(torch.randn(32, 4, 4, generator=generator), model="taef2") for _ in range(50)]
            with lock:
                jobs.extend(mine)
        except Exception as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(jobs) == 200
    for job in jobs:
        job.wait(timeout=180)
    assert all(job.status() is JobStatus.FINISHED for job in jobs)
    assert list(redis_conn.scan_iter("latentq:latent:*")) == []

    rq_bin = [sys.executable, "-c", "import sys; from rq.cli import main; sys.exit(main())"]
    info = subprocess.run([*rq_bin, "info", "--url", env["LATENTQ_REDIS_URL"]], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    assert "latentq.taef2" in info.stdout
    assert "bulk" in info.stdout
