"""Nothing lost under crashes, faults, load and bad input: real worker processes, injected faults."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import numpy as np
import pytest
import torch
from helpers import decode_png, reference_pixels, taef2, wait_until

from latentq import Client, JobStatus, QueueFull
from latentq.config import Settings
from latentq.core.wire import latent_to_bytes

pytestmark = pytest.mark.timeout(180)


def faults(**values) -> dict[str, str]:
    return {"LATENTQ_FAULTS": json.dumps(values)}


def stats(redis_conn, name: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in redis_conn.hgetall(f"latentq:worker-stats:{name}").items() if v.isdigit()}


def test_sigkill_mid_batch_jobs_are_requeued_and_finished_by_another_worker(procs, redis_conn):
    doomed = procs.worker("taef2", name="doomed", max_wait_ms=200, env=faults(decode_delay_s=30))
    client = Client()
    latents = torch.randn(4, 32, 4, 4)
    jobs = client.submit_many(latents, model="taef2")  # one transaction: one batch
    wait_until(lambda: all(job.status() is JobStatus.STARTED for job in jobs), 30)
    killed_at = time.monotonic()
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    procs.worker("taef2", name="rescuer")
    for job in jobs:
        job.wait(timeout=60)
    recovery = time.monotonic() - killed_at
    assert recovery < 60, recovery
    assert all(job.info().worker == "rescuer" for job in jobs)
    assert list(redis_conn.scan_iter("latentq:latent:*")) == []
    for job, latent in zip(jobs, latents):  # the rescued images are the decodes of their own latents
        diff = np.abs(decode_png(job.read()).astype(int) - reference_pixels(taef2(), latent).astype(int)).max()
        assert diff <= 1


def test_sigterm_finishes_the_current_batch_then_exits(procs):
    worker = procs.worker("taef2", max_wait_ms=200, env=faults(decode_delay_s=2))
    client = Client()
    jobs = client.submit_many(torch.randn(4, 32, 4, 4), model="taef2")
    wait_until(lambda: jobs[0].status() is JobStatus.STARTED, 30)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    assert [job.status() for job in jobs] == [JobStatus.FINISHED] * 4


def test_transient_store_failures_are_retried_and_the_job_finishes_once(procs, redis_conn):
    procs.worker("taef2", name="flaky-store", env=faults(store_failures=2))
    job = Client().submit(torch.randn(32, 4, 4), model="taef2")
    (result,) = job.wait(60)
    assert result.bytes > 0 and Client().store.exists(result.key)
    assert stats(redis_conn, "flaky-store")["finished"] == 1


def test_a_store_that_keeps_failing_fails_the_job_with_its_error(procs, env):
    from latentq import JobFailed

    procs.env = {**procs.env, "LATENTQ_MAX_RETRIES": "0"}
    procs.worker("taef2", env=faults(store_failures=1000))
    job = Client().submit(torch.randn(32, 4, 4), model="taef2")
    with pytest.raises(JobFailed, match="store write failed"):
        job.wait(60)
    info = job.info()
    assert info.status is JobStatus.FAILED and info.results == []


def test_out_of_memory_batches_split_in_halves(procs, redis_conn):
    procs.worker("taef2", name="splitter", max_batch=8, max_wait_ms=200, env=faults(oom_batch_above=2))
    client = Client()
    jobs = client.submit_many(torch.randn(8, 32, 4, 4), model="taef2")
    for job in jobs:
        job.wait(60)
    assert stats(redis_conn, "splitter")["decoded_jobs"] == 8
    assert all((job.info().batch_size or 0) <= 2 for job in jobs)


def test_out_of_memory_single_job_falls_back_to_tiled_then_fails_clearly(procs, tmp_path, models_file):
    from tiny_configs import CONFIGS

    (tmp_path / "sd15.json").write_text(json.dumps(dict(CONFIGS["sd15"], sample_size=64)))
    models_file.write_text(models_file.read_text() + '\n[models.sd15]\nconfig = "sd15.json"\n')
    procs.worker("sd15", "taef2", extra=("--no-previews",), env=faults(oom_untiled_pixels_above=64 * 64))
    client = Client()
    tiled = client.submit(torch.randn(1, 4, 16, 16), model="sd15")  # 128x128 untiled "does not fit"
    assert tiled.wait(60) and tiled.info().tiled is True
    untileable = client.submit(torch.randn(32, 16, 16), model="taef2")  # TAEF2 has no tiled decode
    with pytest.raises(Exception, match="OutOfMemory"):
        untileable.wait(60)


def test_backpressure_client_and_api_until_the_queue_drains(procs, env):
    procs.env = {**procs.env, "LATENTQ_MAX_QUEUED": "10"}
    api = procs.api()
    client = Client(settings=Settings.from_env(max_queued=10))
    queued = [client.submit(torch.randn(32, 2, 2), model="taef2") for _ in range(10)]
    with pytest.raises(QueueFull, match="limit is 10"):
        client.submit(torch.randn(32, 2, 2), model="taef2")
    body = latent_to_bytes(torch.randn(32, 2, 2))
    response = httpx.post(f"{api}/v1/jobs", params={"model": "taef2"}, content=body)
    assert response.status_code == 429 and int(response.headers["retry-after"]) > 0
    assert "limit is 10" in response.json()["error"]["message"]
    procs.worker("taef2")
    for job in queued:
        job.wait(60)
    accepted = httpx.post(f"{api}/v1/jobs", params={"model": "taef2"}, content=body)
    assert accepted.status_code == 202
    assert client.submit(torch.randn(32, 2, 2), model="taef2").wait(60)


def test_high_priority_job_submitted_after_ten_normal_ones_starts_first(procs):
    procs.worker("taef2", max_batch=1, max_wait_ms=0, env=faults(decode_delay_s=0.3))
    client = Client()
    busy = client.submit(torch.randn(32, 4, 4), model="taef2")
    wait_until(lambda: busy.status() is JobStatus.STARTED, 30)  # the worker is busy
    normal = [client.submit(torch.randn(32, 4, 4), model="taef2") for _ in range(10)]
    urgent = client.submit(torch.randn(32, 4, 4), model="taef2", priority="high")
    for job in [busy, *normal, urgent]:
        job.wait(60)
    started = {job.id: job.info().started_at for job in normal + [urgent]}
    assert started[urgent.id] < min(started[job.id] for job in normal)


def test_deadline_expires_a_job_nobody_started(procs, redis_conn):
    client = Client()
    waiting = client.submit(torch.randn(32, 4, 4), model="taef2", deadline=time.time() + 1)
    popped = client.submit(torch.randn(32, 4, 4), model="taef2", deadline=time.time() + 1)
    time.sleep(1.5)
    info = waiting.info()  # reading the status ends it: no worker needed
    assert info.status is JobStatus.EXPIRED and "deadline" in info.error
    assert redis_conn.exists(f"latentq:latent:{waiting.id}") == 0
    procs.worker("taef2")  # the worker refuses the other one when it pops it
    wait_until(lambda: redis_conn.exists(f"latentq:latent:{popped.id}") == 0, 30)
    info = popped.info()
    assert info.status is JobStatus.EXPIRED and "DeadlineExpired" in info.error


def test_limits_are_configurable_and_enforced_at_the_api(procs):
    procs.env = {**procs.env, "LATENTQ_MAX_OUTPUT_PIXELS": str(64 * 64), "LATENTQ_MAX_BODY_BYTES": "20000"}
    api = procs.api()
    too_wide = httpx.post(f"{api}/v1/jobs", params={"model": "taef2"}, content=latent_to_bytes(torch.randn(32, 8, 16)))
    assert too_wide.status_code == 413 and "4096" in too_wide.json()["error"]["message"]
    too_big = httpx.post(f"{api}/v1/jobs", params={"model": "taef2"}, content=b"\0" * 30000)
    assert too_big.status_code == 413 and "20000" in too_big.json()["error"]["message"]
    assert os.environ.get("LATENTQ_MAX_OUTPUT_PIXELS") is None  # the test process keeps its defaults
