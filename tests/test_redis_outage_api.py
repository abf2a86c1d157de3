"""Redis dies under a running API (SIGKILL) and comes back on the same port.

During the outage every route answers 503 JSON with Retry-After (never a 500),
the Python clients raise ``Unavailable``; afterwards the API, its listener and
the clients recover without a restart. The test runs its own Redis server: the
session's is shared by other tests.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from redis import Redis
from redis.exceptions import RedisError

from latentq import Client, HttpClient
from latentq.core.request import JobStatus
from latentq.core.wire import latent_to_bytes
from latentq.errors import Unavailable
from latentq.local.redis_server import EmbeddedRedis

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def own_redis(procs, monkeypatch):
    server = EmbeddedRedis().start()
    procs.env = {**procs.env, "LATENTQ_REDIS_URL": server.url}
    monkeypatch.setenv("LATENTQ_REDIS_URL", server.url)
    yield server
    procs.stop_all()  # the API before its Redis
    server.stop()


def kill(server: EmbeddedRedis) -> None:
    process = server._process
    assert process is not None
    process.kill()  # SIGKILL: no goodbye to any client
    process.wait()


def until(check, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{check} did not hold within {timeout} s"
        time.sleep(0.1)


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert int(response.headers["retry-after"]) > 0
    error = response.json()["error"]
    assert error["type"] == "Unavailable" and error["message"] and "field" in error
    assert response.json()["detail"]


def healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def listener_subscribed(url: str) -> bool:
    connection = Redis.from_url(url)
    try:
        return connection.execute_command("PUBSUB", "NUMPAT") >= 1
    except RedisError:
        return False
    finally:
        connection.close()


def test_api_and_clients_ride_out_a_redis_outage(procs, own_redis):
    api = procs.api()
    latent = latent_to_bytes(torch.randn(32, 2, 2))
    job_id = httpx.post(f"{api}/v1/jobs", params={"model": "taef2"}, content=latent).json()["id"]
    client = Client(own_redis.url)
    assert client.job_info(job_id).status is JobStatus.QUEUED
    Redis.from_url(own_redis.url).save()  # the queued job survives the restart below
    until(lambda: listener_subscribed(own_redis.url))

    with ThreadPoolExecutor(4) as pool:
        long_poll = pool.submit(httpx.get, f"{api}/v1/jobs/{job_id}", params={"wait": 120}, timeout=150)
        until(lambda: httpx.get(f"{api}/healthz").json()["waiting"] == 1)
        kill(own_redis)

        # The long-poll in progress learns of the outage from the listener and answers 503.
        assert_unavailable(long_poll.result(timeout=60))
        routes = [
            ("GET", "/healthz"),
            ("GET", f"/v1/jobs/{job_id}"),
            ("GET", f"/v1/jobs/{job_id}?wait=5"),
            ("DELETE", f"/v1/jobs/{job_id}"),
            ("GET", "/v1/models"),
            ("GET", "/metrics"),
        ]
        for method, path in routes:
            assert_unavailable(httpx.request(method, f"{api}{path}", timeout=30))
        assert_unavailable(httpx.post(f"{api}/v1/jobs", params={"model": "taef2"}, content=latent, timeout=30))

        with pytest.raises(Unavailable):
            client.job_info(job_id)
        with pytest.raises(Unavailable):
            client.wait_for(job_id, 5)
        with pytest.raises(Unavailable):
            client.submit(torch.randn(32, 2, 2), model="taef2")
        with pytest.raises(Unavailable):
            client.queued_count("taef2")
        with HttpClient(api, retries=0) as http_client:
            with pytest.raises(Unavailable):
                http_client.job(job_id).info()
            with pytest.raises(Unavailable):
                http_client.submit(torch.randn(32, 2, 2), model="taef2")

        # A GET of the HttpClient retries (honoring Retry-After) and succeeds once Redis is back.
        patient = HttpClient(api, retries=30)
        started = threading.Event()
        patient_info = pool.submit(lambda: (started.set(), patient.job(job_id).info())[1])
        started.wait(10)
        own_redis.start()  # same port, same directory: the saved queue comes back

        until(lambda: healthy(api))
        assert patient_info.result(timeout=120).status is JobStatus.QUEUED
        patient.close()

    # Recovered without a restart: submits, statuses, the listener (re-subscribed) and the Client.
    until(lambda: listener_subscribed(own_redis.url))
    second = httpx.post(f"{api}/v1/jobs", params={"model": "taef2"}, content=latent)
    assert second.status_code == 202
    assert httpx.get(f"{api}/v1/jobs/{job_id}").json()["status"] == "queued"
    assert httpx.get(f"{api}/v1/models").status_code == 200 and httpx.get(f"{api}/metrics").status_code == 200
    assert client.job_info(job_id).status is JobStatus.QUEUED
    assert client.submit(torch.randn(32, 2, 2), model="taef2").status() is JobStatus.QUEUED
    with ThreadPoolExecutor(1) as pool:  # a long-poll again ends on the done message of a cancel
        long_poll = pool.submit(httpx.get, f"{api}/v1/jobs/{job_id}", params={"wait": 120}, timeout=150)
        until(lambda: httpx.get(f"{api}/healthz").json()["waiting"] == 1)
        assert httpx.delete(f"{api}/v1/jobs/{job_id}").status_code == 200
        assert long_poll.result(timeout=60).json()["status"] == "canceled"
    client.close()
