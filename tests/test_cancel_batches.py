"""Cancel (DELETE /v1/jobs/{id}), batches (POST /v1/batches, GET /v1/batches/{id}) and `latentq submit --wait`,
with real Redis, workers and the API under uvicorn."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import pytest
import torch
from helpers import decode_png, wait_until
from safetensors.torch import save_file

from latentq import Client, JobStatus
from latentq.core.wire import latent_to_bytes
from latentq.errors import JobConflict


def finished_status(url: str, timeout: float = 60) -> dict:
    body = httpx.get(url, params={"wait": timeout}, timeout=timeout + 10).json()
    assert body["status"] == "finished", body
    return body


@pytest.mark.timeout(180)
def test_cancel_a_queued_job_then_a_worker_never_runs_it(procs, redis_conn):
    api = procs.api()  # no worker yet: the job stays queued
    queued = httpx.post(f"{api}/v1/jobs", params={"model": "taef2"}, content=latent_to_bytes(torch.randn(32, 4, 4)))
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["id"]
    assert redis_conn.exists(f"latentq:latent:{job_id}")

    canceled = httpx.delete(f"{api}/v1/jobs/{job_id}")
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    assert not redis_conn.exists(f"latentq:latent:{job_id}")  # the latent is deleted at once

    procs.worker("taef2", name="after-cancel")
    after = httpx.post(f"{api}/v1/jobs", params={"model": "taef2"}, content=latent_to_bytes(torch.randn(32, 4, 4)))
    finished_status(after.json()["status_url"])
    status = httpx.get(f"{api}/v1/jobs/{job_id}").json()
    assert status["status"] == "canceled" and status["started_at"] is None and status["results"] == []
    assert status["error"] == "canceled before it started"
    assert int(redis_conn.hget("latentq:worker-stats:after-cancel", "decoded_jobs")) == 1
    # Canceling twice is a conflict, not a second cancel.
    again = httpx.delete(f"{api}/v1/jobs/{job_id}")
    assert again.status_code == 409 and "canceled" in again.json()["error"]["message"]


@pytest.mark.timeout(180)
def test_cancel_of_a_finished_job_is_409_and_of_an_unknown_job_404(procs):
    procs.worker("taef2")
    api = procs.api()
    body = httpx.post(f"{api}/v1/jobs", params={"model": "taef2"}, content=latent_to_bytes(torch.randn(32, 4, 4))).json()
    finished_status(body["status_url"])

    conflict = httpx.delete(f"{api}/v1/jobs/{body['id']}")
    assert conflict.status_code == 409
    assert conflict.headers["content-type"] == "application/json"
    error = conflict.json()["error"]
    assert error["type"] == "JobConflict" and error["field"] == "id"
    assert error["message"] == f"job {body['id']} is finished and cannot be canceled"
    assert httpx.get(body["status_url"]).json()["status"] == "finished"  # untouched
    with pytest.raises(JobConflict, match="finished"):
        Client().cancel(body["id"])

    missing = httpx.delete(f"{api}/v1/jobs/no-such-job")
    assert missing.status_code == 404
    message = "no job 'no-such-job' (never submitted, or older than the result TTL)"
    assert missing.json()["error"] == {"type": "JobNotFound", "message": message, "field": "id"}


@pytest.mark.timeout(180)
def test_batch_counts_per_status_while_part_is_done(procs):
    api = procs.api()
    jobs = Client().submit_many(torch.randn(4, 32, 4, 4), model="taef2")
    batch_url = f"{api}/v1/batches/{jobs[0].batch_id}"
    before = httpx.get(batch_url).json()
    assert before["total"] == 4 and not before["done"]
    assert before["counts"] == {"queued": 4, "started": 0, "finished": 0, "failed": 0, "canceled": 0, "expired": 0}
    assert [job["id"] for job in before["jobs"]] == [job.id for job in jobs]
    assert all(job["status_url"] == f"{api}/v1/jobs/{job['id']}" for job in before["jobs"])

    # One job per decode call, each slowed down: the batch is observably part done.
    procs.worker("taef2", max_batch=1, env={"LATENTQ_FAULTS": json.dumps({"decode_delay_s": 1.0})})
    partial = wait_until(lambda: (b := httpx.get(batch_url).json())["counts"]["finished"] >= 1 and b, 60, 0.02)
    assert not partial["done"] and partial["counts"]["finished"] < 4
    assert sum(partial["counts"].values()) == 4
    assert partial["counts"]["queued"] + partial["counts"]["started"] == 4 - partial["counts"]["finished"]

    done = wait_until(lambda: (b := httpx.get(batch_url).json())["done"] and b, 60)
    assert done["counts"]["finished"] == 4 and done["total"] == 4
    for job in done["jobs"]:
        (result,) = job["results"]
        assert result["url"].startswith(f"{api}/v1/results/")
        png = httpx.get(result["url"])
        assert png.status_code == 200 and decode_png(png.content).shape == (32, 32, 3)
    assert httpx.get(f"{api}/v1/batches/no-such-batch").status_code == 404


@pytest.mark.timeout(180)
def test_post_batches_makes_one_job_per_sample(procs):
    procs.worker("taef2")
    api = procs.api()
    response = httpx.post(f"{api}/v1/batches", params={"model": "taef2", "output_format": "webp"},
                          content=latent_to_bytes(torch.randn(3, 32, 4, 6)))  # fmt: skip
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["total"] == 3 and len(body["job_ids"]) == 3
    assert body["batch_url"] == f"{api}/v1/batches/{body['id']}" == response.headers["location"]
    assert [job["id"] for job in body["jobs"]] == body["job_ids"]

    done = wait_until(lambda: (b := httpx.get(body["batch_url"]).json())["done"] and b, 60)
    assert done["counts"]["finished"] == 3
    for job in done["jobs"]:
        assert job["batch_id"] == body["id"]
        assert job["results"][0]["content_type"] == "image/webp"
        assert (job["results"][0]["width"], job["results"][0]["height"]) == (48, 32)

    bad = [
        ({"model": "nope"}, latent_to_bytes(torch.randn(2, 32, 4, 4)), 404, "unknown model"),
        ({"model": "taef2"}, latent_to_bytes(torch.randn(2, 16, 4, 4)), 422, "latent 0: "),
        ({"model": "taef2"}, latent_to_bytes(torch.randn(8)), 422, "a batch needs shape (B, ...)"),
        ({"model": "taef2"}, b"not safetensors", 422, "not a safetensors"),
    ]
    for params, content, status, words in bad:
        answer = httpx.post(f"{api}/v1/batches", params=params, content=content)
        assert answer.status_code == status, answer.text
        assert words in answer.json()["error"]["message"]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["direct", "api"])
def test_submit_wait_follows_the_batch(procs, env, tmp_path, mode):
    procs.worker("taef2")
    save_file({"latent": torch.randn(2, 32, 4, 4)}, str(tmp_path / "two.safetensors"))
    save_file({"latent": torch.randn(32, 4, 6)}, str(tmp_path / "one.safetensors"))  # another shape
    api = procs.api() if mode == "api" else None
    out = tmp_path / "out"
    argv = ["submit", str(tmp_path / "two.safetensors"), str(tmp_path / "one.safetensors"), "--model", "taef2",
            "--wait", "--out", str(out)] + (["--api", api] if api else [])  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "latentq", *argv], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["one-latent-0.png", "two-latent-0.png", "two-latent-1.png"]
    assert "3/3" in done.stderr  # the progress bar reached the end

    batches = dict(re.findall(r"^batch (\w+): (\d+) job", done.stderr, re.M))
    # Straight to Redis: one batch of three. Over HTTP a batch body is one stacked tensor: one per shape.
    assert sorted(batches.values()) == (["3"] if mode == "direct" else ["1", "2"])
    client = Client()
    job_ids = [line.split("\t")[1] for line in done.stdout.splitlines() if line.count("\t") == 1]
    assert len(job_ids) == 3
    for batch_id, count in batches.items():
        info = client.batch_info(batch_id)
        assert info["done"] and info["counts"]["finished"] == int(count)
        assert {job["id"] for job in info["jobs"]} <= set(job_ids)
    assert all(client.job_info(job_id).status is JobStatus.FINISHED for job_id in job_ids)
