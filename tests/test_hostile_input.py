"""Hostile input to the served API (uvicorn, real Redis): each gets a 4xx in the error shape, in bounded memory.

Ids and keys outside their alphabet, safetensors headers built to crash a parser, shapes with too many
dimensions, deep or large metadata, a PNG that decodes to 50 MB from 50 KB, a body trickled in a byte at
a time, and webhooks aimed inside the network. No worker runs: nothing here needs one.
"""

from __future__ import annotations

import io
import json
import re
import socket
import struct
import threading
import time
from urllib.parse import quote, urlsplit

import httpx
import pytest
import torch
from PIL import Image
from webhook_receiver import Receiver

from latentq import Client
from latentq.core.metadata import METADATA_MAX_BYTES
from latentq.core.wire import latent_to_bytes
from latentq.errors import InvalidRequest
from latentq.webhooks.sender import WebhookSender

GOOD = latent_to_bytes(torch.randn(32, 4, 4))
BODY_TIMEOUT_S = 2


def header_body(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def assert_error(response: httpx.Response, status: int, field: str | None) -> dict:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] and error["message"] and response.json()["detail"]
    if field is not None:
        assert error["field"] == field, error
    return error


@pytest.fixture
def api(procs) -> str:
    procs.env = {**procs.env, "LATENTQ_BODY_TIMEOUT": str(BODY_TIMEOUT_S)}
    procs.env.pop("LATENTQ_WEBHOOK_ALLOW", None)
    return procs.api()


@pytest.fixture
def http(api):
    with httpx.Client(base_url=api, timeout=30) as client:
        yield client


# ---------------------------------------------------------------- ids and keys


BAD_IDS = ["abc.def", "%00", quote("🙂"), "a" * 65, quote("a b"), "a%3Bb", "-" * 65]


@pytest.mark.timeout(120)
def test_malformed_ids_are_422_naming_the_field(http):
    for raw in BAD_IDS:
        assert_error(http.get(f"/v1/jobs/{raw}"), 422, "job_id")
        assert_error(http.get(f"/v1/jobs/{raw}", params={"wait": 1}), 422, "job_id")
        assert_error(http.delete(f"/v1/jobs/{raw}"), 422, "job_id")
        assert_error(http.get(f"/v1/batches/{raw}"), 422, "batch_id")
        # A malformed result key names no object: 404 naming key, as an unknown one (the pattern is documented).
        assert_error(http.get(f"/v1/results/{raw}/0-abcdefghijk.png"), 404, "key")
    # Well-formed but unknown: still 404.
    assert_error(http.get(f"/v1/jobs/{'a' * 64}"), 404, "id")
    assert_error(http.delete("/v1/jobs/no_such-job"), 404, "id")
    assert_error(http.get("/v1/results/job/0-abcdefghijk.png"), 404, "key")


# ---------------------------------------------------------------- safetensors headers


TENSOR_HEADERS = {
    "shape of strings": b'{"latent": {"dtype": "F32", "shape": ["a"], "data_offsets": [0, 4]}}',
    "shape of null": b'{"latent": {"dtype": "F32", "shape": [null], "data_offsets": [0, 4]}}',
    "shape of 1e400": b'{"latent": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}}',
    "shape of floats": b'{"latent": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}',
    "shape of booleans": b'{"latent": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}}',
    "shape not a list": b'{"latent": {"dtype": "F32", "shape": {"a": 1}, "data_offsets": [0, 4]}}',
    "nine dimensions": b'{"latent": {"dtype": "F32", "shape": [1,1,1,1,1,1,1,1,1], "data_offsets": [0, 4]}}',
    "dtype not a string": b'{"latent": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}',
    "unknown dtype": b'{"latent": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}',
    "offsets of strings": b'{"latent": {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}}',
    "offsets too short": b'{"latent": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}',
    "offsets negative": b'{"latent": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}',
    "tensor not an object": b'{"latent": [1, 2, 3]}',
    "metadata not strings": b'{"__metadata__": {"a": [1]}, "latent": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
    "a 5000-digit number": b'{"latent": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}',
    "nested 20,000 deep (within the length cap)": b"[" * 20_000 + b"]" * 20_000,
    "nested objects 8,000 deep": b'{"a":' * 8_000 + b"1" + b"}" * 8_000,
    "header not UTF-8": b'{"\xff": 1}',
}  # fmt: skip


@pytest.mark.timeout(120)
def test_malformed_safetensors_headers_are_4xx(http, procs):
    routes = ["/v1/jobs", "/v1/batches"]
    for name, header in TENSOR_HEADERS.items():
        for route in routes:
            response = http.post(route, params={"model": "taef2"}, content=header_body(header, b"\0" * 4))
            assert response.status_code == 422, (name, route, response.text[:300])
            assert_error(response, 422, None)
    # Nested 100,000 levels, and header lengths past the cap or past the body.
    for body in (header_body(b"[" * 100_000), struct.pack("<Q", 2**63) + b"{}",
                 struct.pack("<Q", 10**6) + b"{" * 1000, header_body(b" " * 70_000 + b"{}")):  # fmt: skip
        assert_error(http.post("/v1/jobs", params={"model": "taef2"}, content=body), 422, "body")
    # Too many elements for the limit: 413, from the header alone.
    huge = b'{"latent": {"dtype": "F32", "shape": [100000, 100000, 100000], "data_offsets": [0, 4]}}'
    assert_error(http.post("/v1/jobs", params={"model": "taef2"}, content=header_body(huge, b"\0" * 4)), 413,
                 "latent")  # fmt: skip
    assert http.get("/healthz").status_code == 200
    assert procs.started[-1].poll() is None


@pytest.mark.timeout(120)
def test_decode_shape_is_bounded(http):
    def decode(shape: list, body: bytes, **params) -> httpx.Response:
        return http.post("/v1/models/taef2/decode", params={"shape": shape, "dtype": "float32", "timeout": 0.1,
                                                              **params}, content=body)  # fmt: skip

    assert_error(decode(["1"] * 65, b"\0" * 4), 422, "shape")
    assert_error(decode(["1"] * 9, b"\0" * 4), 422, "shape")
    assert_error(decode(["1", "-4"], b""), 422, "shape")
    assert_error(decode(["a"], b"\0" * 4), 422, "shape")
    assert_error(decode(["9" * 5000], b"\0" * 4), 422, "shape")
    assert_error(decode(["1", "32", "4", "4"], b"\0" * 100), 422, "shape")  # 100 bytes for 512 elements
    assert_error(decode(["100000", "100000", "100000"], b"\0" * 4), 413, "shape")
    assert_error(decode(["[1,32,4,4]"], b"\0" * 4, dtype="float128"), 422, "dtype")
    # The same checks on encode's tensor bodies.
    assert_error(http.post("/v1/models/taef2/encode", params={"shape": ["1"] * 65, "dtype": "uint8"},
                           content=b"\0"), 422, "shape")  # fmt: skip


# ---------------------------------------------------------------- metadata


def nested(depth: int) -> str:
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


@pytest.mark.timeout(120)
def test_deep_or_large_metadata_is_422_over_http_and_from_the_client(http, env):
    for depth in (600, 300, 9):
        assert_error(http.post("/v1/jobs", params={"model": "taef2", "metadata": nested(depth)}, content=GOOD),
                     422, "metadata")  # fmt: skip
    for bad in ('{"a": NaN}', '{"a": Infinity}', "[1, 2]", '"text"', "{"):
        assert_error(http.post("/v1/jobs", params={"model": "taef2", "metadata": bad}, content=GOOD), 422, "metadata")
    ok = http.post("/v1/jobs", params={"model": "taef2", "metadata": nested(8)}, content=GOOD)
    assert ok.status_code == 202, ok.text
    assert http.get(f"/v1/jobs/{ok.json()['id']}").json()["metadata"] == json.loads(nested(8))
    # Too large: over HTTP a 16 KiB query string is already past uvicorn's request-line limit, so the
    # Client shows it (the same check, in DecodeRequest).
    client = Client()
    deep: dict = {}
    inner = deep
    for _ in range(100_000):  # a Python object far deeper than any JSON encoder recurses
        inner["a"] = inner = {}
    for metadata in (json.loads(nested(600)), json.loads(nested(300)), deep, {"x": "y" * METADATA_MAX_BYTES},
                     {"x": float("nan")}, {"x": object()}):  # fmt: skip
        with pytest.raises(InvalidRequest) as raised:
            client.submit(torch.randn(32, 4, 4), model="taef2", metadata=metadata)
        assert raised.value.field == "metadata"
    assert client.queued_count("taef2") == 1  # only the one accepted over HTTP


# ---------------------------------------------------------------- a PNG bomb


def _memory_kb(pid: int, field: str) -> int:
    status = open(f"/proc/{pid}/status").read()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1))


@pytest.mark.timeout(120)
def test_a_png_bomb_is_413_before_it_is_decoded(api, http, procs):
    buffer = io.BytesIO()
    Image.new("RGB", (4096, 4096)).save(buffer, "PNG", optimize=True)  # 50 MB of pixels in ~50 KB
    bomb = buffer.getvalue()
    assert len(bomb) < 100_000
    pid = procs.started[-1].pid
    for _ in range(2):  # warm up: the route's imports and first allocations are not the bomb's
        assert_error(http.post("/v1/models/taef2/encode", content=b"not an image"), 422, "body")
    before = _memory_kb(pid, "VmRSS")

    answers: list[httpx.Response] = []

    def send() -> None:
        answers.append(httpx.post(f"{api}/v1/models/taef2/encode", content=bomb, timeout=60))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 6
    for response in answers:
        assert "pixels" in assert_error(response, 413, "image")["message"]
    growth_mb = (_memory_kb(pid, "VmHWM") - before) / 1024
    assert growth_mb < 100, f"the API's peak memory grew {growth_mb:.0f} MB"


# ---------------------------------------------------------------- a body trickled in


@pytest.mark.timeout(120)
def test_a_slow_body_gets_408(api):
    """One byte every 0.25 s: refused once the body timeout (2 s here) has passed, with 408 JSON naming body.

    A raw socket: the answer comes while the client is still sending, which an HTTP client does not read.
    """
    parts = urlsplit(api)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(b"POST /v1/jobs?model=taef2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: 100000\r\n\r\n")  # fmt: skip
        sock.settimeout(0.25)
        answer = b""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and b"\r\n\r\n" not in answer:
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            except TimeoutError:
                try:
                    sock.sendall(b"\0")
                except OSError:  # the server answered and closed: read what it sent
                    sock.settimeout(5)
        sock.settimeout(5)
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, OSError):
                break
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    error = json.loads(body)["error"]
    assert error["field"] == "body" and error["type"] == "BodyTimeout"


# ---------------------------------------------------------------- webhooks aimed inside the network


@pytest.mark.timeout(120)
def test_callback_urls_inside_the_network_are_refused(http, env, redis_server):
    redis_port = urlsplit(redis_server.url).port
    refused = [f"http://127.0.0.1:{redis_port}/", "http://10.0.0.5/hook", "http://169.254.169.254/latest/meta-data/",
               "http://[::1]:8080/", f"http://localhost:{redis_port}/", "http://[fd00:ec2::254]/",
               "http://2130706433/", "http://0x7f.1/", "http://example.com@127.0.0.1/", "http://[::ffff:10.1.2.3]/",
               "http://192.168.1.1:8080/", "http://0.0.0.0/", "http://224.0.0.1/", "gopher://127.0.0.1/"]  # fmt: skip
    client = Client()
    for url in refused:
        response = http.post("/v1/jobs", params={"model": "taef2", "callback_url": url}, content=GOOD)
        assert_error(response, 422, "callback_url")
        assert_error(http.post("/v1/batches", params={"model": "taef2", "callback_url": url},
                               content=latent_to_bytes(torch.randn(2, 32, 4, 4))), 422, "callback_url")  # fmt: skip
        with pytest.raises(InvalidRequest) as raised:
            client.submit(torch.randn(32, 4, 4), model="taef2", callback_url=url)
        assert raised.value.field == "callback_url", url
    assert client.queued_count("taef2") == 0


@pytest.mark.timeout(120)
def test_allowed_destinations_pass(procs, monkeypatch):
    procs.env = {**procs.env, "LATENTQ_WEBHOOK_ALLOW": "127.0.0.1, 10.0.0.0/8"}
    monkeypatch.setenv("LATENTQ_WEBHOOK_ALLOW", "127.0.0.1, 10.0.0.0/8")
    api = procs.api()
    for url in ("http://127.0.0.1:9/hook", "http://10.0.0.5/hook", "http://localhost:9/hook"):
        assert httpx.post(f"{api}/v1/jobs", params={"model": "taef2", "callback_url": url}, content=GOOD,
                          timeout=30).status_code == 202, url  # fmt: skip
        assert Client().submit(torch.randn(32, 4, 4), model="taef2", callback_url=url).id
    assert_error(httpx.post(f"{api}/v1/jobs", params={"model": "taef2", "callback_url": "http://192.168.0.1/"},
                            content=GOOD, timeout=30), 422, "callback_url")  # fmt: skip


@pytest.mark.timeout(60)
def test_the_sender_checks_again_and_connects_to_the_checked_address(monkeypatch):
    monkeypatch.delenv("LATENTQ_WEBHOOK_ALLOW", raising=False)
    receiver = Receiver()
    try:
        port = urlsplit(receiver.url).port
        refusing = WebhookSender("secret")  # what a job submitted elsewhere may still name
        for url in (f"{receiver.url}/refused", f"http://localhost:{port}/refused-by-name"):
            attempt = refusing.deliver(url, "msg_j1_finished", b"{}")
            assert not attempt.delivered and not attempt.retry and "LATENTQ_WEBHOOK_ALLOW" in attempt.reason
        refusing.close()
        assert receiver.deliveries == []

        allowing = WebhookSender("secret", allow=["127.0.0.0/8"])
        # Resolved, checked, connected by address.
        assert allowing.deliver(f"http://localhost:{port}/by-name", "msg_j3_finished", b"{}").delivered
        allowing.close()
        (delivery,) = receiver.deliveries
        assert delivery.path == "/by-name" and delivery.headers["host"] == f"localhost:{port}"
        assert delivery.verifies("secret")
    finally:
        receiver.close()
