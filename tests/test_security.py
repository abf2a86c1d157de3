"""Malformed and hostile requests: each gets its documented 4xx (never a 5xx) and the worker keeps serving."""

from __future__ import annotations

import json
import struct

import httpx
import pytest
import torch
from safetensors.torch import save as st_save

from latentq import HttpClient
from latentq.wire import latent_to_bytes

pytestmark = pytest.mark.timeout(180)

KEY = "s3cret-key-1"
GOOD = latent_to_bytes(torch.randn(32, 4, 4))


def safetensors_with(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


# (name, method, path, params, body, headers, status)
CASES = [
    ("no API key", "POST", "/v1/jobs", {"model": "taef2"}, GOOD, {}, 401),
    ("wrong API key", "POST", "/v1/jobs", {"model": "taef2"}, GOOD, {"authorization": "Bearer nope"}, 401),
    ("not bearer", "GET", "/v1/models", {}, b"", {"authorization": f"Basic {KEY}"}, 401),
    ("truncated safetensors", "POST", "/v1/jobs", {"model": "taef2"}, GOOD[: len(GOOD) // 2], None, 422),
    ("header lies about sizes", "POST", "/v1/jobs", {"model": "taef2"},
     safetensors_with({"x": {"dtype": "F32", "shape": [1, 32, 4, 4], "data_offsets": [0, 2048]}}, b"\0" * 64), None, 422),
    ("huge declared shape", "POST", "/v1/jobs", {"model": "taef2"},
     safetensors_with({"x": {"dtype": "F32", "shape": [1, 32, 100000, 100000], "data_offsets": [0, 4]}}, b"\0" * 4), None, 413),
    ("negative dimension", "POST", "/v1/jobs", {"model": "taef2"},
     safetensors_with({"x": {"dtype": "F32", "shape": [1, 32, -4, 4], "data_offsets": [0, 0]}}), None, 422),
    ("zero dimension", "POST", "/v1/jobs", {"model": "taef2"}, latent_to_bytes(torch.zeros(1, 32, 0, 4)), None, 422),
    ("int64 dtype", "POST", "/v1/jobs", {"model": "taef2"}, st_save({"x": torch.ones(32, 4, 4, dtype=torch.int64)}), None, 422),
    ("bool dtype", "POST", "/v1/jobs", {"model": "taef2"}, st_save({"x": torch.ones(32, 4, 4, dtype=torch.bool)}), None, 422),
    ("float64 dtype", "POST", "/v1/jobs", {"model": "taef2"}, st_save({"x": torch.ones(32, 4, 4, dtype=torch.float64)}), None, 422),
    ("NaN", "POST", "/v1/jobs", {"model": "taef2"}, latent_to_bytes(torch.full((32, 4, 4), float("nan"))), None, 422),
    ("empty body", "POST", "/v1/jobs", {"model": "taef2"}, b"", None, 422),
    ("header not JSON", "POST", "/v1/jobs", {"model": "taef2"}, struct.pack("<Q", 5) + b"{{{{{", None, 422),
    ("two tensors", "POST", "/v1/jobs", {"model": "taef2"}, st_save({"a": torch.ones(2), "b": torch.ones(2)}), None, 422),
    ("oversize body", "POST", "/v1/jobs", {"model": "taef2"}, b"\0" * 300_000, None, 413),
    ("unknown model", "POST", "/v1/jobs", {"model": "../../etc"}, GOOD, None, 404),
    ("bad output format", "POST", "/v1/jobs", {"model": "taef2", "output_format": "exe"}, GOOD, None, 422),
    ("quality out of range", "POST", "/v1/jobs", {"model": "taef2", "quality": 0}, GOOD, None, 422),
    ("metadata not JSON", "POST", "/v1/jobs", {"model": "taef2", "metadata": "{x"}, GOOD, None, 422),
    ("bad priority", "POST", "/v1/jobs", {"model": "taef2", "priority": "urgent"}, GOOD, None, 422),
    ("file callback", "POST", "/v1/jobs", {"model": "taef2", "callback_url": "file:///etc/passwd"}, GOOD, None, 422),
    ("packed without size", "POST", "/v1/jobs", {"model": "flux1"}, latent_to_bytes(torch.randn(1, 4, 64)), None, 422),
    ("result path traversal", "GET", "/v1/results/../../../etc/passwd", {}, b"", None, 404),
    ("result encoded traversal", "GET", "/v1/results/%2e%2e%2f%2e%2e%2fetc%2fpasswd", {}, b"", None, 404),
    ("result absolute path", "GET", "/v1/results//etc/passwd", {}, b"", None, 404),
    ("unknown job", "GET", "/v1/jobs/../../x", {}, b"", None, 404),
    ("wait too long", "GET", "/v1/jobs/abc", {"wait": 100000}, b"", None, 422),
]


@pytest.fixture
def secured(procs):
    procs.env = {**procs.env, "LATENTQ_API_KEYS": f"old-key,{KEY}", "LATENTQ_MAX_BODY_BYTES": "200000",
                 "LATENTQ_MAX_LATENT_ELEMENTS": "50000"}  # fmt: skip
    worker = procs.worker("taef2")
    return procs.api(), worker


def test_every_malformed_request_gets_its_4xx_and_the_worker_keeps_serving(secured):
    api, worker = secured
    assert len(CASES) >= 15
    auth = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=api, timeout=30) as http:
        for name, method, path, params, body, headers, status in CASES:
            response = http.request(method, path, params=params, content=body or None,
                                    headers=auth if headers is None else headers)  # fmt: skip
            assert response.status_code == status, (name, response.status_code, response.text[:300])
            if path.startswith("/v1/jobs") and method == "POST" or status == 401:
                error = response.json()["error"]
                assert error["message"] and error["type"], name
    assert worker.poll() is None
    with HttpClient(api, api_key=KEY) as client:
        assert client.submit(torch.randn(32, 4, 4), model="taef2").wait(60)[0].width == 32


def test_health_is_open_and_keys_rotate(secured):
    api, _ = secured
    assert httpx.get(f"{api}/healthz").status_code == 200
    assert httpx.get(f"{api}/metrics").status_code == 401
    for key in ("old-key", KEY):
        assert httpx.get(f"{api}/v1/models", headers={"authorization": f"Bearer {key}"}).status_code == 200
