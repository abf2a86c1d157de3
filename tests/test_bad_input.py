"""Bad input: a clear 4xx JSON from the API, a clear exception from Client.submit, and the worker stays up."""

from __future__ import annotations

import httpx
import pytest
import torch
from safetensors.torch import save as st_save

from latentq import Client, JobFailed
from latentq.config import Settings
from latentq.core.request import Limits
from latentq.core.wire import latent_to_bytes
from latentq.errors import InvalidLatent, InvalidRequest, LatentTooLarge, UnknownModel, UnsupportedFormat

LIMIT = 50_000  # latent elements, small enough for a test body

GOOD = torch.randn(32, 4, 4)
CASES = [
    # (name, params, body, status, words the message must carry, exception)
    ("unknown model", {"model": "nope"}, latent_to_bytes(GOOD), 404, ["unknown model", "nope"], UnknownModel),
    ("wrong channels", {}, latent_to_bytes(torch.randn(16, 4, 4)), 422, ["16 channels", "expects 32"], InvalidLatent),
    ("wrong ndim", {}, latent_to_bytes(torch.randn(2, 1, 32, 4, 4)), 422, ["5 dimensions"], InvalidLatent),
    ("integer dtype", {}, st_save({"x": torch.ones(32, 4, 4, dtype=torch.int32)}), 422, ["int32", "dtype"], InvalidLatent),
    ("nan", {}, latent_to_bytes(torch.full((32, 4, 4), float("nan"))), 422, ["NaN or Inf"], InvalidLatent),
    ("inf", {}, latent_to_bytes(torch.full((32, 4, 4), float("inf"))), 422, ["NaN or Inf"], InvalidLatent),
    ("not safetensors", {}, b"\x89PNG this is not a tensor", 422, ["not a safetensors"], InvalidLatent),
    ("over the size limit", {}, latent_to_bytes(torch.randn(32, 64, 64)), 413, ["131072 elements", f"{LIMIT}"], LatentTooLarge),
    ("unknown format", {"output_format": "gif"}, latent_to_bytes(GOOD), 422, ["output_format", "gif"], UnsupportedFormat),
]


@pytest.fixture
def api_and_worker(procs):
    limit_env = {"LATENTQ_MAX_LATENT_ELEMENTS": str(LIMIT)}
    worker = procs.worker("taef2", env=limit_env)
    procs.env = {**procs.env, **limit_env}
    return procs.api(), worker


@pytest.mark.timeout(180)
def test_api_rejects_bad_input_and_the_worker_stays_up(api_and_worker):
    api, worker = api_and_worker
    for name, params, body, status, words, _ in CASES:
        response = httpx.post(f"{api}/v1/jobs", params={"model": "taef2", **params}, content=body)
        assert response.status_code == status, (name, response.text)
        error = response.json()["error"]
        for word in words:
            assert word in error["message"], (name, error)
        assert error["field"], name
    good = httpx.post(f"{api}/v1/jobs", params={"model": "taef2"}, content=latent_to_bytes(GOOD)).json()
    status = httpx.get(good["status_url"]).json()
    for _ in range(300):
        if status["status"] == "finished":
            break
        import time

        time.sleep(0.1)
        status = httpx.get(good["status_url"]).json()
    assert status["status"] == "finished"
    assert worker.poll() is None


def _tensor(body: bytes) -> torch.Tensor:
    from safetensors.torch import load

    return next(iter(load(body).values()))


@pytest.mark.timeout(60)
def test_client_submit_raises_clear_errors(env):
    client = Client(settings=Settings.from_env(limits=Limits(max_latent_elements=LIMIT)))
    for name, params, body, _, words, exc_type in CASES:
        if name == "not safetensors":
            latent, model = [[1.0, 2.0]], "taef2"  # not a tensor at all
        else:
            latent, model = _tensor(body), params.get("model", "taef2")
        with pytest.raises(exc_type) as raised:
            client.submit(latent, model=model, output_format=params.get("output_format", "png"))
        assert isinstance(raised.value, InvalidRequest)
        if name != "not safetensors":
            for word in words:
                assert word in str(raised.value), (name, raised.value)
    assert client.queue("taef2").count == 0


@pytest.mark.timeout(120)
def test_a_bad_latent_in_a_batch_fails_alone(procs, redis_conn):
    """The worker re-checks what it pops: a latent corrupted in Redis fails its job only."""
    client = Client()
    jobs = [client.submit(torch.randn(32, 4, 4), model="taef2") for _ in range(4)]
    redis_conn.set(f"latentq:latent:{jobs[1].id}", latent_to_bytes(torch.full((1, 32, 4, 4), float("nan"))))
    redis_conn.set(f"latentq:latent:{jobs[2].id}", b"garbage")
    worker = procs.worker("taef2", max_batch=8, max_wait_ms=20)
    jobs[0].wait(60)
    jobs[3].wait(60)
    with pytest.raises(JobFailed, match="NaN or Inf"):
        jobs[1].wait(60)
    with pytest.raises(JobFailed, match="not a safetensors"):
        jobs[2].wait(60)
    assert worker.poll() is None
    after = client.submit(torch.randn(32, 4, 4), model="taef2")
    assert after.wait(60)[0].width == 32
    assert list(redis_conn.scan_iter("latentq:latent:*")) == []
