"""The API in this process: ``create_app`` driven through ``httpx.ASGITransport`` (no uvicorn, no worker process).

Its lifespan runs as a server's would (the listener, the webhook drainer). A real Redis is still needed:
the session's embedded one (the job admission and status are Lua scripts and RQ's records, which nothing
short of Redis runs), so these tests are in the integration tier; everything else stays in this process,
a decode included (``DecodeWorker(...).work(burst=True)``, as tests/test_rqstate.py runs it).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from PIL import Image

from latentq.api import create_app
from latentq.config import Settings
from latentq.core.wire import latent_to_bytes
from latentq.models.loader import load_model
from latentq.models.registry import load_registry
from latentq.state.tenants import TenantDirectory
from latentq.store import LocalStore
from latentq.worker import DecodeWorker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BASE = "http://latentq.test"
UNKNOWN_ID = "0" * 32


@pytest.fixture
def settings(env) -> Settings:
    return Settings.from_env()


def serve(settings: Settings, scenario: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    """Run ``scenario(http)`` against ``create_app(settings)`` in this process, inside the app's lifespan."""

    async def main() -> Any:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
                return await scenario(http)

    return asyncio.run(main())


def latent(*shape: int) -> bytes:
    return latent_to_bytes(torch.randn(*(shape or (32, 4, 4))))


def assert_error(response: httpx.Response, status: int, kind: str, field: str | None) -> dict[str, Any]:
    """latentq's error body: ``{"error": {"type", "message", "field"}, "detail"}``, as JSON."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "detail"} and set(body["error"]) == {"type", "message", "field"}
    assert body["error"]["type"] == kind and body["error"]["field"] == field
    assert body["detail"] == body["error"]["message"] and body["detail"]
    return body["error"]


def test_health_and_models(settings):
    async def scenario(http: httpx.AsyncClient) -> None:
        health = await http.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok" and health.json()["redis"] == "ok" and health.json()["waiting"] == 0
        models = (await http.get("/v1/models")).json()["models"]
        taef2 = next(model for model in models if model["name"] == "taef2")
        assert taef2["latent_channels"] == 32 and taef2["layout"] == "image" and "png" in taef2["output_formats"]
        assert taef2["queued"] == 0 and taef2["workers"] == 0 and taef2["loaded"] is False
        assert "/v1/jobs/{job_id}" in (await http.get("/openapi.json")).json()["paths"]

    serve(settings, scenario)


def test_submit_status_and_an_unknown_id(settings):
    async def scenario(http: httpx.AsyncClient) -> None:
        submitted = await http.post("/v1/jobs", params={"model": "taef2", "metadata": '{"run": 7}'}, content=latent())
        assert submitted.status_code == 202
        job = submitted.json()
        assert job["status"] == "queued" and job["model"] == "taef2"
        assert submitted.headers["location"] == job["status_url"] == f"{BASE}/v1/jobs/{job['id']}"

        status = (await http.get(f"/v1/jobs/{job['id']}")).json()
        assert status["status"] == "queued" and status["queue_position"] == 0 and status["tenant"] == "default"
        assert status["metadata"] == {"run": 7} and status["results"] == [] and status["workers"] == 0
        assert status["waiting_reason"] == "no live worker serves model 'taef2'"
        listed = (await http.get("/v1/jobs")).json()
        assert [each["id"] for each in listed["jobs"]] == [job["id"]] and listed["next_cursor"] is None

        for method in ("GET", "DELETE"):
            error = assert_error(await http.request(method, f"/v1/jobs/{UNKNOWN_ID}"), 404, "JobNotFound", "id")
            assert UNKNOWN_ID in error["message"]
        assert_error(await http.get(f"/v1/batches/{UNKNOWN_ID}"), 404, "JobNotFound", "id")
        assert_error(await http.get("/v1/jobs/not.an.id"), 422, "InvalidRequest", "job_id")

        canceled = await http.delete(f"/v1/jobs/{job['id']}")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        assert_error(await http.delete(f"/v1/jobs/{job['id']}"), 409, "JobConflict", "id")

    serve(settings, scenario)


def test_another_tenants_job_reads_as_one_that_never_existed(settings, redis_conn):
    directory = TenantDirectory(redis_conn)
    alice, bob = directory.create_key("alice"), directory.create_key("bob")

    async def scenario(http: httpx.AsyncClient) -> None:
        def as_(key: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {key}"}

        assert_error(await http.get("/v1/models"), 401, "Unauthorized", "authorization")
        submitted = await http.post("/v1/jobs", params={"model": "taef2"}, content=latent(), headers=as_(alice))
        job_id = submitted.json()["id"]
        assert (await http.get(f"/v1/jobs/{job_id}", headers=as_(alice))).json()["tenant"] == "alice"

        never = assert_error(await http.get(f"/v1/jobs/{UNKNOWN_ID}", headers=as_(bob)), 404, "JobNotFound", "id")
        for method in ("GET", "DELETE"):
            foreign = await http.request(method, f"/v1/jobs/{job_id}", headers=as_(bob))
            error = assert_error(foreign, 404, "JobNotFound", "id")
            assert error["message"] == never["message"].replace(UNKNOWN_ID, job_id)  # the id is not confirmed
        assert (await http.get("/v1/jobs", headers=as_(bob))).json()["jobs"] == []
        assert (await http.get(f"/v1/jobs/{job_id}", headers=as_(alice))).json()["status"] == "queued"  # not canceled

    serve(settings, scenario)


def test_bad_input_is_a_4xx_naming_the_field(settings):
    async def scenario(http: httpx.AsyncClient) -> None:
        async def submit(content: bytes = latent(), **params: Any) -> httpx.Response:
            return await http.post("/v1/jobs", params={"model": "taef2", **params}, content=content)

        assert "metadata" in assert_error(await submit(metadata="{oops"), 422, "InvalidRequest", "metadata")["message"]
        assert assert_error(await submit(quality=0), 422, "InvalidRequest", "quality")["message"].startswith("quality:")
        assert_error(await submit(output_format="gif"), 422, "UnsupportedFormat", "output_format")
        assert_error(await submit(model="no-such-model"), 404, "UnknownModel", "model")
        wrong = assert_error(await submit(latent(4, 4, 4)), 422, "InvalidLatent", "latent")
        assert "32" in wrong["message"]  # names what the model takes
        assert_error(await submit(b"not a safetensors file"), 422, "InvalidLatent", "body")
        declared = {"content-length": str(settings.limits.max_body_bytes + 1)}
        too_big = await http.post("/v1/jobs", params={"model": "taef2"}, content=latent(), headers=declared)
        assert_error(too_big, 413, "LatentTooLarge", "body")
        assert_error(await http.post("/v1/models/taef2/decode"), 422, "InvalidRequest", "shape")
        # Nothing of it was queued.
        assert (await http.get("/v1/jobs")).json()["jobs"] == []

    serve(settings, scenario)


def test_a_finished_jobs_results(settings, redis_conn):
    """Submit over HTTP, decode in this process, read the status and the signed result URL over HTTP."""
    model = load_model(load_registry(settings.models_file).get("taef2"))
    worker = DecodeWorker({"taef2": model}, redis_conn, LocalStore(Path(settings.store)), name="inprocess")

    async def scenario(http: httpx.AsyncClient) -> None:
        submitted = await http.post("/v1/jobs", params={"model": "taef2"}, content=latent(32, 4, 4))
        job_id = submitted.json()["id"]
        worker.work(burst=True)  # on this (the main) thread: RQ installs signal handlers; the loop waits meanwhile

        status = (await http.get(f"/v1/jobs/{job_id}", params={"wait": 10})).json()
        assert status["status"] == "finished", status
        (result,) = status["results"]
        assert result["content_type"] == "image/png" and (result["width"], result["height"]) == (32, 32)  # 8 px a cell
        assert result["url"].startswith(f"{BASE}/v1/results/{result['key']}?expires=")  # signed for this API

        fetched = await http.get(result["url"])
        assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(fetched.content)).size == (32, 32)
        assert len(fetched.content) == result["bytes"]
        forged = await http.get(f"/v1/results/{result['key']}", params={"expires": "1", "sig": "0" * 64})
        assert forged.status_code == 403 and forged.json()["error"]["type"] == "Forbidden"

    serve(settings, scenario)
