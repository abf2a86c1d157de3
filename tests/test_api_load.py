"""The API under load, served by uvicorn in its own process: long-polls hold no thread and leak no connection."""

from __future__ import annotations

import asyncio
import resource
import time

import httpx
import pytest
import torch
from redis import Redis

from latentq.core.wire import latent_to_bytes
from latentq.local.redis_server import EmbeddedRedis

pytestmark = pytest.mark.timeout(180)

LONG_POLLS = 500


@pytest.fixture
def own_redis(procs, monkeypatch):
    """A Redis server only this test's API talks to: its client count is the API's alone."""
    with EmbeddedRedis() as server:
        procs.env = {**procs.env, "LATENTQ_REDIS_URL": server.url}
        monkeypatch.setenv("LATENTQ_REDIS_URL", server.url)
        connection = Redis.from_url(server.url)
        yield connection
        connection.close()
        procs.stop_all()  # the API before its Redis


def ensure_fd_limit(needed: int) -> None:
    """Both ends of every socket live here or in the API (which inherits this limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"the open-file limit is {hard}; {needed} are needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def submit(api: str, count: int) -> list[str]:
    latent = latent_to_bytes(torch.randn(32, 2, 2))
    with httpx.Client(base_url=api) as http:
        return [http.post("/v1/jobs", params={"model": "taef2"}, content=latent).json()["id"] for _ in range(count)]


def redis_clients(redis_conn) -> int:
    return int(redis_conn.info("clients")["connected_clients"])


def test_rounds_of_long_polls_leave_the_redis_client_count_flat(procs, own_redis):
    api = procs.api()
    ids = submit(api, 10)  # no worker: they stay queued, every poll runs its full second

    async def round_of(count: int) -> list[int]:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=api, limits=limits, timeout=30) as http:
            responses = await asyncio.gather(
                *[http.get(f"/v1/jobs/{ids[i % len(ids)]}", params={"wait": 1}) for i in range(count)]
            )
        return [r.status_code for r in responses]

    assert asyncio.run(round_of(40)) == [200] * 40
    after_first = redis_clients(own_redis)
    for _ in range(2):
        assert asyncio.run(round_of(40)) == [200] * 40
    after_third = redis_clients(own_redis)
    # Pooled connections are reused: what round 1 opened serves rounds 2 and 3.
    assert after_third <= after_first + 2, (after_first, after_third)
    assert own_redis.execute_command("PUBSUB", "NUMPAT") == 1  # one listener for every poll


def test_500_long_polls_leave_health_and_submits_prompt(procs, own_redis):
    ensure_fd_limit(4 * LONG_POLLS)
    api = procs.api()
    ids = submit(api, 20)
    latent = latent_to_bytes(torch.randn(32, 2, 2))

    async def scenario() -> tuple[float, float, list[httpx.Response]]:
        limits = httpx.Limits(max_connections=LONG_POLLS + 20, max_keepalive_connections=LONG_POLLS + 20)
        async with httpx.AsyncClient(base_url=api, limits=limits, timeout=60) as http:
            polls = [
                asyncio.create_task(http.get(f"/v1/jobs/{ids[i % len(ids)]}", params={"wait": 30}))
                for i in range(LONG_POLLS)
            ]
            # The API reports how many long-polls it holds: measure once all of them are waiting.
            deadline = time.monotonic() + 60
            while (await http.get("/healthz")).json()["waiting"] < LONG_POLLS:
                assert time.monotonic() < deadline, "the long-polls did not all arrive"
                await asyncio.sleep(0.1)

            started = time.monotonic()
            health = await http.get("/healthz")
            health_s = time.monotonic() - started
            assert health.status_code == 200 and health.json()["waiting"] == LONG_POLLS

            started = time.monotonic()
            submitted = await http.post("/v1/jobs", params={"model": "taef2"}, content=latent)
            submit_s = time.monotonic() - started
            assert submitted.status_code == 202

            # Ending the jobs ends every long-poll at once (the done message, not the 30 s timeout).
            for job_id in ids:
                assert (await http.delete(f"/v1/jobs/{job_id}")).status_code == 200
            return health_s, submit_s, await asyncio.gather(*polls)

    health_s, submit_s, polls = asyncio.run(scenario())
    assert health_s < 1.0, f"/healthz took {health_s:.2f} s under {LONG_POLLS} long-polls"
    assert submit_s < 1.0, f"POST /v1/jobs took {submit_s:.2f} s under {LONG_POLLS} long-polls"
    assert {r.status_code for r in polls} == {200}
    assert {r.json()["status"] for r in polls} == {"canceled"}


def test_remote_decodes_waiting_for_a_worker_hold_no_thread(procs, own_redis):
    """More diffusers-protocol decodes than the API has threads wait at once; a thread-bound route answers."""
    waiting = 80  # the API runs blocking work on about 40 threads
    ensure_fd_limit(4 * waiting)
    api = procs.api()
    latent = torch.randn(1, 32, 2, 2)
    params = {"shape": list(latent.shape), "dtype": "float32", "output_type": "pt", "timeout": 30}

    async def scenario() -> tuple[float, list[httpx.Response]]:
        limits = httpx.Limits(max_connections=waiting + 10, max_keepalive_connections=waiting + 10)
        async with httpx.AsyncClient(base_url=api, limits=limits, timeout=60) as http:
            decodes = [asyncio.create_task(http.post("/v1/models/taef2/decode", params=params,
                                                     content=latent.numpy().tobytes()))
                       for _ in range(waiting)]  # fmt: skip
            deadline = time.monotonic() + 60
            while (await http.get("/healthz")).json()["waiting"] < waiting:
                assert time.monotonic() < deadline, "the decodes did not all arrive"
                await asyncio.sleep(0.1)
            started = time.monotonic()
            models = await http.get("/v1/models")  # runs on the API's thread pool
            models_s = time.monotonic() - started
            assert models.status_code == 200
            queued = [key.decode().removeprefix("rq:job:") for key in own_redis.keys("rq:job:*")]
            for job_id in queued:  # nobody decodes them: cancel, and every request ends with its error
                await http.delete(f"/v1/jobs/{job_id}")
            return models_s, await asyncio.gather(*decodes)

    models_s, decodes = asyncio.run(scenario())
    assert models_s < 1.0, f"GET /v1/models took {models_s:.2f} s beside {waiting} waiting decodes"
    assert {r.status_code for r in decodes} == {409}  # canceled: the protocol's error body, no 5xx
    assert {r.json()["error"]["type"] for r in decodes} == {"JobFailed"}
