"""The API's other routes, served by uvicorn."""

import httpx
import pytest
import torch

from latentq.core.wire import latent_to_bytes

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def api(procs):
    return procs.api()


def test_models_health_and_docs(api, procs):
    models = httpx.get(f"{api}/v1/models").json()["models"]
    taef2 = next(m for m in models if m["name"] == "taef2")
    assert taef2["latent_channels"] == 32 and taef2["layout"] == "image"
    assert taef2["loaded"] is False and taef2["workers"] == 0
    assert "png" in taef2["output_formats"]
    procs.worker("taef2")
    taef2 = next(m for m in httpx.get(f"{api}/v1/models").json()["models"] if m["name"] == "taef2")
    assert taef2["loaded"] is True and taef2["workers"] == 1

    assert httpx.get(f"{api}/healthz").json()["status"] == "ok"
    assert httpx.get(f"{api}/docs").status_code == 200
    paths = httpx.get(f"{api}/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/models", "/healthz"} <= set(paths)


def test_queued_job_reports_its_position_and_unknown_things_are_404(api):
    ids = [
        httpx.post(f"{api}/v1/jobs", params={"model": "taef2"}, content=latent_to_bytes(torch.randn(32, 2, 2))).json()["id"]
        for _ in range(3)
    ]
    status = httpx.get(f"{api}/v1/jobs/{ids[2]}").json()
    assert status["status"] == "queued" and status["queue_position"] == 2
    missing = httpx.get(f"{api}/v1/jobs/does-not-exist")
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "id"
    assert httpx.get(f"{api}/v1/results/abc/0-aaaaaaaaaaaaaaaa.png").status_code == 404
    assert httpx.get(f"{api}/v1/results/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_metadata_must_be_json(api):
    response = httpx.post(
        f"{api}/v1/jobs", params={"model": "taef2", "metadata": "{oops"}, content=latent_to_bytes(torch.randn(32, 2, 2))
    )
    assert response.status_code == 422 and response.json()["error"]["field"] == "metadata"
