"""Malformed and hostile requests: each gets its documented 4xx (never a 5xx) and the worker keeps serving."""

from __future__ import annotations

import ipaddress
import json
import struct

import httpx
import pytest
import torch
from safetensors.torch import save as st_save

from latentq import HttpClient
from latentq.core.wire import latent_to_bytes
from latentq.errors import InvalidRequest

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
    ("job id with a dot", "GET", "/v1/jobs/abc.def", {}, b"", None, 422),
    ("loopback callback", "POST", "/v1/jobs", {"model": "taef2", "callback_url": "http://127.0.0.1:6379/"}, GOOD,
     None, 422),
    ("metadata too deep", "POST", "/v1/jobs", {"model": "taef2", "metadata": '{"a":' * 600 + "1" + "}" * 600},
     GOOD, None, 422),
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
            if path.startswith("/v1/jobs") and method == "POST" or status in (401, 422) or "results/%2e" in path:
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


# ---------------------------------------------------------------- netguard: where webhooks may go


PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:82a::200e"]
FORBIDDEN = ["127.0.0.1", "127.255.255.254", "10.0.0.5", "172.16.0.1", "172.31.255.255", "192.168.1.1",
             "169.254.169.254", "169.254.0.1", "0.0.0.0", "100.64.0.1", "224.0.0.1", "239.255.255.250",
             "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1", "::", "::1", "fe80::1", "fc00::1",
             "fd00:ec2::254", "ff02::1", "ff0e::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1",
             "2002:a00:1::1", "2001:db8::1"]  # fmt: skip
INTERNAL_NETWORKS = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
                     "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "::1/128", "fc00::/7", "fe80::/10",
                     "ff00::/8"]  # fmt: skip


def test_netguard_sorts_known_addresses():
    from latentq.core.netguard import forbidden_reason

    for address in PUBLIC:
        assert forbidden_reason(ipaddress.ip_address(address)) is None, address
    for address in FORBIDDEN:
        assert forbidden_reason(ipaddress.ip_address(address)) is not None, address


def hypothesis_test(**kwargs):
    """@given(**kwargs), skipped where hypothesis is not installed (pyproject's test extra lacks it)."""

    def wrap(func):
        def test():
            hypothesis = pytest.importorskip("hypothesis")
            strategies = {name: make(hypothesis.strategies) for name, make in kwargs.items()}
            hypothesis.settings(max_examples=300, deadline=None)(hypothesis.given(**strategies)(func))()

        test.__name__ = func.__name__
        return test

    return wrap


@hypothesis_test(data=lambda st: st.data())
def test_netguard_refuses_every_address_of_internal_networks(data):
    from hypothesis import strategies as st  # run only where hypothesis is installed

    from latentq.core.netguard import WebhookPolicy, forbidden_reason
    network = ipaddress.ip_network(data.draw(st.sampled_from(INTERNAL_NETWORKS)))
    address = network[data.draw(st.integers(0, network.num_addresses - 1))]
    assert forbidden_reason(address) is not None
    host = f"[{address}]" if address.version == 6 else str(address)
    with pytest.raises(InvalidRequest) as raised:
        WebhookPolicy().check(f"http://{host}:{data.draw(st.integers(1, 65535))}/hook")
    assert raised.value.field == "callback_url"
    if address.version == 4:  # the same address in IPv6 clothing is refused too
        assert forbidden_reason(ipaddress.ip_address(f"::ffff:{address}")) is not None
    # Listed in LATENTQ_WEBHOOK_ALLOW: permitted, and only what is listed.
    assert WebhookPolicy.from_entries([str(network)]).allows_address(address)
    assert WebhookPolicy.from_entries([str(address)]).check(f"http://{host}/").addresses == (address,)


@hypothesis_test(value=lambda st: st.integers(0, 2**32 - 1))
def test_netguard_v4_and_its_mapped_v6_agree(value):
    from latentq.core.netguard import forbidden_reason

    v4 = ipaddress.IPv4Address(value)
    mapped = ipaddress.IPv6Address(f"::ffff:{v4}")
    assert (forbidden_reason(v4) is None) == (forbidden_reason(mapped) is None)
    assert (forbidden_reason(v4) is None) == (v4.is_global and not v4.is_multicast)


def test_netguard_urls():
    from latentq.core.netguard import WebhookPolicy

    policy = WebhookPolicy()
    for url in ("http://localhost/", "http://127.1/", "http://0x7f000001/", "http://2130706433/",
                "http://user@127.0.0.1/", "https://[::ffff:7f00:1]/", "ftp://8.8.8.8/", "http:///x", "http://[::1",
                "http://8.8.8.8:99999/", "javascript:alert(1)", "http://a..b/", "http://" + "a" * 300 + "/"):  # fmt: skip
        with pytest.raises(InvalidRequest) as raised:
            policy.check(url)
        assert raised.value.field == "callback_url", url
    assert policy.check("https://8.8.8.8/hook").addresses == (ipaddress.ip_address("8.8.8.8"),)
    assert policy.check("http://localhost/", resolve=False).addresses == ()  # names wait for resolution
    allowed = WebhookPolicy.from_entries(["LocalHost", " ", "10.1.0.0/16"])
    assert allowed.check("http://localhost:8080/").host == "localhost"
    assert allowed.check("http://10.1.2.3/").port == 80
    with pytest.raises(InvalidRequest):
        allowed.check("http://10.2.0.1/")


def test_store_errors_name_the_key_not_the_path(tmp_path):
    from latentq.errors import StoreError
    from latentq.store import LocalStore

    blocker = tmp_path / "secret-server-dir"
    blocker.write_text("a file where the store's root should be")
    store = LocalStore(blocker)
    with pytest.raises(StoreError) as raised:
        store.put("job1/0-abcdefgh.png", b"x", "image/png")
    assert "job1/0-abcdefgh.png" in str(raised.value) and str(tmp_path) not in str(raised.value)
    with pytest.raises(StoreError) as raised:
        store.get("job1/0-abcdefgh.png")
    assert str(tmp_path) not in str(raised.value)
