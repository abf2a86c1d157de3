"""The HTTP producer clients (sync and async) against a live API and worker."""

import asyncio

import pytest
import torch
from helpers import decode_png, photo_latent, psnr

from latentq import HttpClient
from latentq.errors import InvalidLatent, UnknownModel
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
