"""The HTTP producer clients (sync and async) against a live API and worker."""

import asyncio
import threading
import time

import httpx
import pytest
import torch
from helpers import decode_png, photo_latent, psnr
from safetensors.torch import load as st_load

from latentq import HttpClient
from latentq.errors import InvalidLatent, JobConflict, JobFailed, UnknownModel
from latentq.producer import AsyncHttpClient

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def api(procs):
    procs.worker("taef2")
    return procs.api()


def test_sync_client_submit_wait_read(api):
    latent, original = photo_latent("chelsea.png")
    with HttpClient(api) as client:
        job = client.submit(latent, model="taef2", output_format="png", metadata={"prompt": "a cat"})
        (result,) = job.wait(timeout=60)
        assert result.url.startswith(api) and result.content_type == "image/png"
        assert psnr(decode_png(job.read()), original) >= 28
        assert job.info().metadata == {"prompt": "a cat"}
        jobs = client.submit_many(torch.randn(3, 32, 4, 4), model="taef2", output_format="jpeg")
        assert [j.wait(60)[0].content_type for j in jobs] == ["image/jpeg"] * 3
        with pytest.raises(UnknownModel):
            client.submit(latent, model="nope")
        with pytest.raises(InvalidLatent, match="channels"):
            client.submit(torch.randn(4, 4, 4), model="taef2")


def test_async_client(api):
    async def run():
        async with AsyncHttpClient(api) as client:
            jobs = await asyncio.gather(*[client.submit(torch.randn(32, 4, 4), model="taef2", output_format="webp") for _ in range(4)])
            results = await asyncio.gather(*[job.wait(timeout=60) for job in jobs])
            data = await jobs[0].read()
            return results, data

    results, data = asyncio.run(run())
    assert all(r[0].content_type == "image/webp" for r in results)
    assert data[:4] == b"RIFF"


def test_async_submit_encode_answers_as_the_sync_one(api):
    """AsyncHttpClient.submit_encode: the same encode job as HttpClient.submit_encode (task=encode, a tensor out)."""
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(5))
    with HttpClient(api) as client:
        sync_job = client.submit_encode(image, "taef2")
        (sync_result,) = sync_job.wait(timeout=60)
        want = st_load(sync_job.read())["latent"]

    async def run():
        async with AsyncHttpClient(api) as client:
            job = await client.submit_encode(image, "taef2")
            (result,) = await job.wait(timeout=60)
            with pytest.raises(InvalidLatent, match="multiples of"):  # refused as the sync client is
                await client.submit_encode(image[..., :30], "taef2")
            return result, st_load(await job.read())["latent"]

    result, got = asyncio.run(run())
    assert result.content_type == sync_result.content_type
    assert got.shape == (1, 32, 4, 6) and torch.equal(got, want)


class CountingClient(HttpClient):
    """Counts the requests the client sends: a wait must long-poll, not spin."""

    def __init__(self, base_url: str) -> None:
        self.requests = 0
        super().__init__(base_url, http=httpx.Client(base_url=base_url, timeout=30, event_hooks={"request": [self._count]}))

    def _count(self, _request: httpx.Request) -> None:
        self.requests += 1


def test_wait_ends_for_an_expired_or_canceled_job(procs):
    api = procs.api()  # no worker: the jobs stay queued until they expire or are canceled
    with CountingClient(api) as client:
        expiring = client.submit(torch.randn(32, 2, 2), model="taef2", deadline=time.time() + 1)
        with pytest.raises(JobFailed, match="DeadlineExpired"):
            expiring.wait(timeout=60)
        assert expiring.status().value == "expired"
        assert client.requests <= 4  # the submit and one or two long-polls

        canceled = client.submit(torch.randn(32, 2, 2), model="taef2")
        outcome: list[BaseException] = []

        def wait() -> None:
            try:
                canceled.wait(timeout=60)
            except BaseException as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{api}/healthz").json()["waiting"] < 1:  # the wait is in its long-poll
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert canceled.cancel().status.value == "canceled"
        waiter.join(30)
        assert not waiter.is_alive() and isinstance(outcome[0], JobFailed) and "canceled" in str(outcome[0])
        with pytest.raises(JobConflict):
            canceled.cancel()
        assert client.requests <= 12


def test_async_wait_ends_for_a_canceled_job(procs):
    api = procs.api()

    async def run() -> BaseException:
        async with AsyncHttpClient(api) as client:
            job = await client.submit(torch.randn(32, 2, 2), model="taef2")
            waiting = asyncio.create_task(job.wait(timeout=60))
            await asyncio.sleep(0)
            await job.cancel()
            with pytest.raises(JobFailed) as failed:
                await waiting
            return failed.value

    assert "canceled" in str(asyncio.run(run()))
