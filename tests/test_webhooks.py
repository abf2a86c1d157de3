"""Webhooks: Standard Webhooks POSTs per ended job, received by a real local HTTP server and verified
with the ``standardwebhooks`` package (the spec's reference library)."""

from __future__ import annotations

import base64
import json
import logging
import time
from datetime import UTC, datetime

import httpx
import pytest
import torch
from helpers import wait_until
from standardwebhooks import Webhook
from webhook_receiver import SECRET, Receiver

from latentq import Client, JobFailed
from latentq.errors import ConfigError
from latentq.state import keys
from latentq.webhooks.outbox import pending
from latentq.webhooks.sender import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookSender,
    event_body,
    secret_key,
    sign,
    standard_secret,
    verify_signature,
)


@pytest.fixture(autouse=True)
def allow_local_receiver(monkeypatch):
    """The receiver listens on 127.0.0.1, which webhooks may not reach unless allowed (see latentq.core.netguard).

    Autouse fixtures come first, so the ``env`` the processes get carries it too.
    """
    monkeypatch.setenv("LATENTQ_WEBHOOK_ALLOW", "127.0.0.1")
    monkeypatch.setenv("LATENTQ_WEBHOOK_BACKOFF", "0.5")


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def signed_procs(procs):
    procs.env["LATENTQ_WEBHOOK_SECRET"] = SECRET  # workers started from here sign their webhooks
    return procs


def delivered_all(connection) -> bool:
    """The outbox holds nothing more: no delivery can still come."""
    return pending(connection) == 0 and connection.zcard(keys.WEBHOOK_DUE) == 0


@pytest.mark.timeout(180)
def test_one_signed_post_per_finished_and_failed_job(signed_procs, receiver, redis_conn):
    client = Client()
    ok = client.submit(torch.randn(32, 4, 4), model="taef2", callback_url=f"{receiver.url}/hooks/ok")
    bad = client.submit(torch.randn(32, 4, 4), model="taef2", callback_url=f"{receiver.url}/hooks/bad")
    quiet = client.submit(torch.randn(32, 4, 4), model="taef2")  # no callback_url: no webhook
    redis_conn.set(f"latentq:latent:{bad.id}", b"garbage")  # the worker finds a broken latent: the job fails
    signed_procs.worker("taef2")

    ok.wait(60)
    quiet.wait(60)
    with pytest.raises(JobFailed):
        bad.wait(60)
    wait_until(lambda: len(receiver.deliveries) >= 2 and delivered_all(redis_conn), 30)
    assert sorted(d.path for d in receiver.deliveries) == ["/hooks/bad", "/hooks/ok"]

    for delivery in receiver.deliveries:
        assert delivery.headers["content-type"] == "application/json"
        assert delivery.headers[SIGNATURE_HEADER].startswith("v1,")
        assert abs(int(delivery.headers[TIMESTAMP_HEADER]) - time.time()) < 300
        assert delivery.verifies()  # standardwebhooks.Webhook.verify
        assert not delivery.verifies("another-secret")
        assert verify_signature(SECRET, delivery.body, delivery.headers)  # latentq's own check agrees
    by_path = {d.path: d for d in receiver.deliveries}
    finished, failed = by_path["/hooks/ok"], by_path["/hooks/bad"]
    assert finished.msg_id == f"msg_{ok.id}_finished" and failed.msg_id == f"msg_{bad.id}_failed"
    assert finished.payload["type"] == "job.finished" and failed.payload["type"] == "job.failed"
    stamp = datetime.fromisoformat(finished.payload["timestamp"].replace("Z", "+00:00"))
    assert abs(stamp.timestamp() - time.time()) < 300 and stamp.tzinfo == UTC
    assert finished.data["id"] == ok.id and finished.data["status"] == "finished"
    assert finished.data["results"][0]["key"] == ok.info().results[0].key
    assert finished.data["results"][0]["content_type"] == "image/png"
    assert failed.data["id"] == bad.id and failed.data["status"] == "failed"
    assert "not a safetensors" in failed.data["error"]


@pytest.mark.timeout(180)
def test_a_receiver_failing_twice_gets_the_delivery_on_the_third_try(signed_procs, receiver, redis_conn):
    receiver.script = [500, 500]
    job = Client().submit(torch.randn(32, 4, 4), model="taef2", callback_url=f"{receiver.url}/hook")
    signed_procs.worker("taef2")
    job.wait(60)
    wait_until(lambda: len(receiver.deliveries) >= 3 and delivered_all(redis_conn), 30)
    assert [d.status for d in receiver.deliveries] == [500, 500, 200]
    first, second, third = receiver.deliveries
    assert first.body == second.body == third.body  # the same payload, re-signed per attempt
    assert first.msg_id == second.msg_id == third.msg_id == f"msg_{job.id}_finished"  # one id across retries
    assert all(d.verifies() for d in receiver.deliveries)
    assert third.data["status"] == "finished"
    # Exponential backoff from LATENTQ_WEBHOOK_BACKOFF (0.5 s here): at least 0.5 s, then 1 s, between attempts.
    assert second.at - first.at >= 0.5 and third.at - second.at >= 1.0


@pytest.mark.timeout(120)
def test_a_job_canceled_through_the_api_sends_its_webhook(signed_procs, receiver):
    api = signed_procs.api()  # no worker: the job stays queued until canceled; the API drains the outbox
    job = Client().submit(torch.randn(32, 4, 4), model="taef2", callback_url=f"{receiver.url}/hooks/canceled")
    assert httpx.delete(f"{api}/v1/jobs/{job.id}", timeout=30).status_code == 200
    wait_until(lambda: len(receiver.deliveries) >= 1, 30)
    (delivery,) = receiver.deliveries
    assert delivery.path == "/hooks/canceled" and delivery.verifies()
    assert delivery.msg_id == f"msg_{job.id}_canceled" and delivery.payload["type"] == "job.canceled"
    assert delivery.data["id"] == job.id and delivery.data["status"] == "canceled"


@pytest.mark.timeout(120)
def test_a_producer_cancel_is_delivered_by_a_worker(signed_procs, receiver, redis_conn):
    """The Client that canceled holds nothing: its job's webhook waits in Redis for any drainer."""
    with Client() as client:
        job = client.submit(torch.randn(32, 4, 4), model="taef2", callback_url=f"{receiver.url}/hooks/mine")
        assert client.cancel(job.id).status.value == "canceled"
    assert pending(redis_conn) == 1 and receiver.deliveries == []
    signed_procs.worker("taef2")
    wait_until(lambda: receiver.deliveries, 60)
    (delivery,) = receiver.deliveries
    assert delivery.path == "/hooks/mine" and delivery.data["status"] == "canceled" and delivery.verifies()


# ---------------------------------------------------------------- signatures and the sender, in process


@pytest.mark.timeout(30)
def test_signatures_are_the_standard_ones_for_both_secret_forms():
    body = event_body("finished", {"id": "abc", "status": "finished"})
    now = int(time.time())
    raw = SECRET
    standard = "whsec_" + base64.b64encode(b"\x00\x01binary key\xff").decode()
    for secret in (raw, standard):
        signature = sign(secret, "msg_abc_finished", now, body)
        headers = {ID_HEADER: "msg_abc_finished", TIMESTAMP_HEADER: str(now), SIGNATURE_HEADER: signature}
        # The reference library accepts it, given the secret's whsec_ form (or the raw key's bytes).
        assert Webhook(standard_secret(secret)).verify(body, headers) == json.loads(body)
        assert Webhook(secret_key(secret)).verify(body, headers) == json.loads(body)
        assert verify_signature(secret, body, headers)
        assert verify_signature(secret, body, {**headers, SIGNATURE_HEADER: "v1,bm9wZQ== " + signature})
        for tampered in ({**headers, ID_HEADER: "msg_abc_failed"}, {**headers, TIMESTAMP_HEADER: str(now + 1)},
                         {**headers, SIGNATURE_HEADER: signature[3:]}, {**headers, TIMESTAMP_HEADER: "soon"}):  # fmt: skip
            assert not verify_signature(secret, body, tampered)
        assert not verify_signature(secret, body.replace(b"finished", b"failed"), headers)
        assert not verify_signature("another-secret", body, headers)
        # Replays: a valid signature made too long ago (or ahead) is refused.
        assert verify_signature(secret, body, headers, now=now + 299)
        assert not verify_signature(secret, body, headers, now=now + 301)
        assert not verify_signature(secret, body, headers, now=now - 301)
    assert standard_secret(standard) == standard and secret_key(standard) == b"\x00\x01binary key\xff"
    assert secret_key("whsec_" + base64.b64encode(b"key!").decode().rstrip("=")) == b"key!"  # padding optional
    with pytest.raises(ConfigError):
        secret_key("whsec_not base64!")
    payload = json.loads(body)
    assert set(payload) == {"type", "timestamp", "data"} and payload["type"] == "job.finished"


@pytest.mark.timeout(30)
def test_one_attempt_and_what_it_tells_the_outbox(receiver):
    sender = WebhookSender(SECRET)
    body = event_body("finished", {"id": "j1"})
    receiver.script = [500, 410]
    failed = sender.deliver(f"{receiver.url}/a", "msg_j1_finished", body)
    gone = sender.deliver(f"{receiver.url}/a", "msg_j1_finished", body)
    ok = sender.deliver(f"{receiver.url}/a", "msg_j1_finished", body)
    unreachable = sender.deliver("http://127.0.0.1:1/unreachable", "msg_j2_failed", body)  # connection refused
    assert (failed.delivered, failed.retry, failed.reason) == (False, True, "HTTP 500")
    assert (gone.delivered, gone.retry) == (False, False)  # 410 Gone: the receiver wants no more
    assert ok.delivered and not unreachable.delivered and unreachable.retry
    assert [d.status for d in receiver.deliveries] == [500, 410, 200]
    assert all(d.verifies() and d.msg_id == "msg_j1_finished" and d.body == body for d in receiver.deliveries)
    sender.close()


@pytest.mark.timeout(30)
def test_without_a_secret_deliveries_are_unsigned_with_one_warning(receiver, monkeypatch, caplog):
    import latentq.webhooks.sender as webhooks

    monkeypatch.delenv("LATENTQ_WEBHOOK_SECRET", raising=False)
    monkeypatch.setattr(webhooks, "_warned_unsigned", type(webhooks._warned_unsigned)())  # a fresh process's
    with caplog.at_level(logging.WARNING, logger="latentq.webhooks"):
        sender = WebhookSender()
        assert not sender.secret and not caplog.records  # no webhook sent yet: nothing to warn about
        for index in range(2):
            assert sender.deliver(f"{receiver.url}/plain", f"msg_j{index}_finished", b"{}").delivered
    sender.close()
    assert [r.getMessage() for r in caplog.records] == ["LATENTQ_WEBHOOK_SECRET is not set: webhooks are sent unsigned"]
    for delivery in receiver.deliveries:
        assert SIGNATURE_HEADER not in delivery.headers
        assert delivery.headers[ID_HEADER] and delivery.headers[TIMESTAMP_HEADER]
        assert not delivery.verifies()


def test_the_same_settings_decide_a_callback_at_submit_and_at_delivery(env, monkeypatch):
    """Settings(webhook_allow=...) given to a Client (or create_app) was ignored at submit, where only the
    environment was read, and used at delivery: now one Settings decides both."""
    import dataclasses

    import torch

    from latentq import Client
    from latentq.config import Settings
    from latentq.errors import InvalidRequest
    from latentq.webhooks.sender import WebhookSender

    monkeypatch.delenv("LATENTQ_WEBHOOK_ALLOW", raising=False)
    url = "http://127.0.0.1:9/hook"
    allowing = dataclasses.replace(Settings.from_env(), webhook_allow=("127.0.0.1",))
    with Client(settings=allowing) as client:
        job = client.submit(torch.randn(32, 4, 4), model="taef2", callback_url=url)  # accepted: allowed
        assert job.id
    WebhookSender(allow=allowing.webhook_allow).policy.check(url)  # and allowed at delivery
    with Client(settings=Settings.from_env()) as client, pytest.raises(InvalidRequest) as refused:
        client.submit(torch.randn(32, 4, 4), model="taef2", callback_url=url)
    assert refused.value.field == "callback_url"
