"""Tenants through the real API: isolation, keys made and revoked with the CLI, limits, idempotency, fair share.

Real Redis, the API under uvicorn, real worker processes, the real ``latentq keys`` command.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from safetensors.torch import save

from latentq import Client
from latentq.config import Settings
from latentq.errors import QueueFull

pytestmark = pytest.mark.timeout(240)

LATENT = torch.zeros(1, 32, 4, 4)
BODY = save({"latent": LATENT})
BATCH_BODY = save({"latent": torch.zeros(2, 32, 4, 4)})


def keys_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "latentq", "keys", *args], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit(api: str, key: str, body: bytes = BODY, path: str = "/v1/jobs", **headers: str) -> httpx.Response:
    return httpx.post(f"{api}{path}", params={"model": "taef2"}, content=body, headers={**auth(key), **headers},
                      timeout=30)  # fmt: skip


def test_tenants_see_only_their_own_jobs(procs):
    procs.env["LATENTQ_API_KEYS"] = "keyA,keyB"
    made = keys_cli(procs.env, "create", "team-c").splitlines()[0]
    api = procs.api()
    job = submit(api, "keyA").json()
    canceled_by_a = submit(api, "keyA").json()
    batch = submit(api, "keyA", BATCH_BODY, "/v1/batches").json()
    job_url, batch_url = f"{api}/v1/jobs/{job['id']}", f"{api}/v1/batches/{batch['id']}"
    for key in ("keyB", made):  # another tenant: every id of A's reads as one that never existed
        for method, url in (("GET", job_url), ("DELETE", job_url), ("GET", batch_url)):
            answer = httpx.request(method, url, headers=auth(key), timeout=30)
            assert answer.status_code == 404, (method, url, answer.text)
            never = httpx.request(method, url.replace(job["id"], "f" * 32).replace(batch["id"], "f" * 32),
                                  headers=auth(key), timeout=30)  # fmt: skip
            assert answer.json()["error"]["message"].replace(job["id"], "f" * 32).replace(batch["id"], "f" * 32) == \
                never.json()["error"]["message"]
    assert httpx.get(job_url, headers=auth("keyA"), timeout=30).json()["status"] == "queued"
    assert httpx.get(batch_url, headers=auth("keyA"), timeout=30).json()["total"] == 2
    canceled = httpx.delete(f"{api}/v1/jobs/{canceled_by_a['id']}", headers=auth("keyA"), timeout=30)
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"

    procs.worker("taef2")
    done = httpx.get(job_url, params={"wait": 60}, headers=auth("keyA"), timeout=90).json()
    assert done["status"] == "finished", done
    key = done["results"][0]["key"]
    assert httpx.get(f"{api}/v1/results/{key}", headers=auth("keyA"), timeout=30).status_code == 200
    other = httpx.get(f"{api}/v1/results/{key}", headers=auth("keyB"), timeout=30)
    assert other.status_code == 404 and other.json()["error"]["type"] == "StoreError"

    # C's own job works with the key the CLI made; revoking it shuts the door on the next request.
    mine = submit(api, made)
    assert mine.status_code == 202
    assert httpx.get(f"{api}/v1/jobs/{mine.json()['id']}", headers=auth(made), timeout=30).status_code == 200
    listed = keys_cli(procs.env, "list")
    prefix = made[:9]
    assert prefix in listed and "team-c" in listed and made not in listed
    keys_cli(procs.env, "revoke", prefix)
    refused = httpx.get(f"{api}/v1/jobs/{mine.json()['id']}", headers=auth(made), timeout=30)
    assert refused.status_code == 401 and refused.json()["error"]["field"] == "authorization"
    assert httpx.get(job_url, headers=auth("keyA"), timeout=30).status_code == 200  # env keys unaffected


def test_tenant_limits_answer_429_with_retry_after(procs):
    limited = keys_cli(procs.env, "create", "limited", "--max-queued", "2").splitlines()[0]
    slow = keys_cli(procs.env, "create", "slow", "--rate", "1/min").splitlines()[0]
    api = procs.api()
    assert [submit(api, limited).status_code for _ in range(2)] == [202, 202]
    full = submit(api, limited)
    assert full.status_code == 429 and full.json()["error"]["type"] == "QueueFull" and "limit is 2" in full.text
    assert int(full.headers["retry-after"]) >= 1
    assert submit(api, slow).status_code == 202
    throttled = submit(api, slow)
    assert throttled.status_code == 429 and throttled.json()["error"]["type"] == "RateLimited"
    assert 1 <= int(throttled.headers["retry-after"]) <= 60


def test_idempotency_key_over_http(procs):
    procs.env["LATENTQ_API_KEYS"] = "a:keyA,b:keyB"
    api = procs.api()
    first = submit(api, "keyA", **{"Idempotency-Key": "render-7"}).json()
    again = submit(api, "keyA", **{"Idempotency-Key": "render-7"}).json()
    other = submit(api, "keyB", **{"Idempotency-Key": "render-7"}).json()
    assert first["id"] == again["id"] and other["id"] != first["id"]
    batch = submit(api, "keyA", BATCH_BODY, "/v1/batches", **{"Idempotency-Key": "batch-7"}).json()
    replay = submit(api, "keyA", BATCH_BODY, "/v1/batches", **{"Idempotency-Key": "batch-7"}).json()
    assert replay["id"] == batch["id"] and replay["job_ids"] == batch["job_ids"]
    too_long = submit(api, "keyA", **{"Idempotency-Key": "x" * 256})
    assert too_long.status_code == 422 and too_long.json()["error"]["field"] == "Idempotency-Key"
    with Client(procs.env["LATENTQ_REDIS_URL"]) as client:
        assert client.queued_count("taef2") == 1 + 1 + 2


def test_fifty_concurrent_submits_against_a_cap_of_six_through_api_and_client(procs):
    procs.env["LATENTQ_MAX_QUEUED"] = "6"
    api = procs.api()
    settings = Settings.from_env(redis_url=procs.env["LATENTQ_REDIS_URL"], max_queued=6)
    clients = [Client(settings=settings) for _ in range(5)]
    http = httpx.Client(timeout=60)
    start = threading.Barrier(50)

    def one(i: int) -> str:
        start.wait()
        if i % 2:
            answer = http.post(f"{api}/v1/jobs", params={"model": "taef2"}, content=BODY)
            assert answer.status_code in (202, 429), answer.text
            return "accepted" if answer.status_code == 202 else "refused"
        try:
            clients[i % 5].submit(LATENT, model="taef2")
            return "accepted"
        except QueueFull:
            return "refused"

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(one, range(50)))
    assert outcomes.count("accepted") == 6, outcomes
    assert clients[0].queued_count("taef2") == 6
    http.close()


def test_a_tenant_is_served_within_about_a_batch_of_another_tenants_flood(procs):
    url = procs.env["LATENTQ_REDIS_URL"]
    flood, late = Client(url, tenant="a"), Client(url, tenant="b")
    a_jobs = []
    for _ in range(10):
        a_jobs += flood.submit_many(torch.zeros(100, 32, 4, 4), model="taef2")
    assert len(a_jobs) == 1000
    procs.worker("taef2", max_batch=8)  # the worker starts on A's backlog
    while sum(job.status().value != "queued" for job in a_jobs[:20]) < 10:
        time.sleep(0.05)
    b_submitted = datetime.datetime.now(datetime.UTC)
    b_jobs = [late.submit(LATENT, model="taef2") for _ in range(10)]
    b_ends = [datetime.datetime.fromisoformat(job.info().ended_at) for job in b_jobs if job.wait(120) is not None]
    last_b = max(b_ends)
    a_between = 0
    for job in a_jobs:
        info = job.info()
        if info.ended_at is not None and b_submitted < datetime.datetime.fromisoformat(info.ended_at) < last_b:
            a_between += 1
    # B's 10 jobs interleave with A's: about one of A's per B job, plus the batches in flight when B arrived.
    assert a_between < 100, a_between
    print(f"A's jobs finished between B's submit and B's last finish: {a_between}")


def test_without_keys_the_api_is_open_and_unscoped(procs):
    api = procs.api()
    with Client(procs.env["LATENTQ_REDIS_URL"], tenant="scripts") as client:
        job = client.submit(LATENT, model="taef2")
    answer = httpx.get(f"{api}/v1/jobs/{job.id}", timeout=30)
    assert answer.status_code == 200 and answer.json()["tenant"] == "scripts"
