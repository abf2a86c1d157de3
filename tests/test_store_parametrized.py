"""The same end-to-end path with each result store: the local directory and S3 (moto's server).

Workers and the API are real processes started after ``store_env`` has set LATENTQ_STORE (and the
S3 variables), so they open the store under test exactly as a deployment would.
"""

from __future__ import annotations

import httpx
import pytest
import torch
from helpers import decode_png, photo_latent, psnr, wait_until

from latentq import Client
from latentq.core.wire import latent_to_bytes
from latentq.store import open_store


def expected_url_start(store_env: dict[str, str], api: str) -> str:
    if store_env["kind"] == "local":
        return f"{api}/v1/results/"  # the API serves a local store's objects
    return f"{store_env['endpoint']}/{store_env['bucket']}/{store_env['prefix']}/"  # presigned, path style


@pytest.mark.timeout(180)
def test_photo_through_the_http_api(store_env, procs):
    procs.worker("taef2")
    api = procs.api()
    latent, original = photo_latent("chelsea.png")
    submitted = httpx.post(f"{api}/v1/jobs", params={"model": "taef2"}, content=latent_to_bytes(latent))
    assert submitted.status_code == 202, submitted.text
    status_url = submitted.json()["status_url"]

    status = wait_until(lambda: (s := httpx.get(status_url).json())["status"] == "finished" and s, 60)
    (result,) = status["results"]
    assert result["url"].startswith(expected_url_start(store_env, api) + result["key"])
    png = httpx.get(result["url"], timeout=10)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert len(png.content) == result["bytes"]
    assert psnr(decode_png(png.content), original) >= 28.0
    assert open_store(store_env["LATENTQ_STORE"]).get(result["key"]) == png.content


@pytest.mark.timeout(180)
def test_batch_status_and_cancel(store_env, procs, redis_conn):
    api = procs.api()
    jobs = Client().submit_many(torch.randn(3, 32, 4, 4), model="taef2")  # no worker yet: all queued
    canceled = httpx.delete(f"{api}/v1/jobs/{jobs[1].id}")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert not redis_conn.exists(f"latentq:latent:{jobs[1].id}")

    procs.worker("taef2")
    batch_url = f"{api}/v1/batches/{jobs[0].batch_id}"
    batch = wait_until(lambda: (b := httpx.get(batch_url).json())["done"] and b, 60)
    assert batch["total"] == 3
    assert batch["counts"] == {"queued": 0, "started": 0, "finished": 2, "failed": 0, "canceled": 1, "expired": 0}
    store = open_store(store_env["LATENTQ_STORE"])
    for job in batch["jobs"]:
        if job["id"] == jobs[1].id:
            assert job["status"] == "canceled" and job["results"] == []
            continue
        (result,) = job["results"]
        assert result["url"].startswith(expected_url_start(store_env, api))
        download = httpx.get(result["url"], timeout=10)
        assert download.status_code == 200 and download.content == store.get(result["key"])
        assert decode_png(download.content).shape == (32, 32, 3)
    assert httpx.delete(f"{api}/v1/jobs/{jobs[0].id}").status_code == 409  # finished: too late
