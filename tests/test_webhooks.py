"""Webhooks: a signed POST per ended job, retried with backoff, received by a real local HTTP server."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import torch
from helpers import wait_until
from webhook_receiver import SECRET, Receiver

from latentq import Client, JobFailed
from latentq.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSender, sign, verify_signature


@pytest.fixture(autouse=True)
def allow_local_receiver(monkeypatch):
    """The receiver listens on 127.0.0.1, which webhooks may not reach unless allowed (see latentq.netguard).

    Autouse fixtures come first, so the ``env`` the processes get carries it too.
    """
    monkeypatch.setenv("LATENTQ_WEBHOOK_ALLOW", "127.0.0.1")


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def signed_procs(procs):
    procs.env["LATENTQ_WEBHOOK_SECRET"] = SECRET  # workers started from here sign their webhooks
    return procs


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
    wait_until(lambda: len(receiver.deliveries) >= 2, 30)
    time.sleep(1.5)  # a duplicate or a delivery for the quiet job would arrive by now
    assert sorted(d.path for d in receiver.deliveries) == ["/hooks/bad", "/hooks/ok"]

    for delivery in receiver.deliveries:
        assert delivery.headers["content-type"] == "application/json"
        assert delivery.headers[SIGNATURE_HEADER.lower()].startswith("sha256=")
        assert abs(int(delivery.headers[TIMESTAMP_HEADER.lower()]) - time.time()) < 60
        assert delivery.verifies()
        assert not delivery.verifies("another-secret")
    by_path = {d.path: json.loads(d.body) for d in receiver.deliveries}
    finished, failed = by_path["/hooks/ok"], by_path["/hooks/bad"]
    assert finished["id"] == ok.id and finished["status"] == "finished"
    assert finished["results"][0]["url"] == ok.info().results[0].url
    assert finished["results"][0]["content_type"] == "image/png"
    assert failed["id"] == bad.id and failed["status"] == "failed"
    assert "not a safetensors" in failed["error"]


@pytest.mark.timeout(180)
def test_a_receiver_failing_twice_gets_the_delivery_on_the_third_try(signed_procs, receiver):
    receiver.script = [500, 500]
    job = Client().submit(torch.randn(32, 4, 4), model="taef2", callback_url=f"{receiver.url}/hook")
    signed_procs.worker("taef2")
    job.wait(60)
    wait_until(lambda: len(receiver.deliveries) >= 3, 30)
    time.sleep(2.5)  # the third try succeeded: no fourth one (it would come 2 s later)
    assert len(receiver.deliveries) == 3
    first, second, third = receiver.deliveries
    assert first.body == second.body == third.body  # the same payload, re-signed per attempt
    assert all(d.verifies() for d in receiver.deliveries)
    assert json.loads(third.body)["status"] == "finished"
    # Exponential backoff from 0.5 s: 0.5 s, then 1 s between attempts.
    assert 0.4 <= second.at - first.at < 2.0
    assert 0.9 <= third.at - second.at < 3.0


# ---------------------------------------------------------------- signatures and the sender, in process


@pytest.mark.timeout(30)
def test_sign_and_verify():
    body = b'{"id":"abc","status":"finished"}'
    now = int(time.time())
    signature = sign(SECRET, body, now)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify_signature(SECRET, body, now, signature)
    assert verify_signature(SECRET, body, str(now), signature)  # the header value is a string
    assert not verify_signature(SECRET, body.replace(b"finished", b"failed"), now, signature)  # tampered body
    assert not verify_signature("another-secret", body, now, signature)
    assert not verify_signature(SECRET, body, now + 1, signature)  # the timestamp is signed too
    assert not verify_signature(SECRET, body, now, signature.removeprefix("sha256="))
    assert not verify_signature(SECRET, body, "not-a-time", signature)
    # Replays: a valid signature made too long ago (or ahead) is refused.
    assert verify_signature(SECRET, body, now, signature, now=now + 299)
    assert not verify_signature(SECRET, body, now, signature, now=now + 301)
    assert not verify_signature(SECRET, body, now, signature, now=now - 301)
    stale = now - 3600
    assert not verify_signature(SECRET, body, stale, sign(SECRET, body, stale))
    assert verify_signature(SECRET, body, stale, sign(SECRET, body, stale), tolerance_s=7200)


@pytest.mark.timeout(30)
def test_sender_retries_then_gives_up_and_never_raises(receiver):
    receiver.script = [500] * 10
    sender = WebhookSender(SECRET, max_attempts=3, backoff_s=0.05)
    sender.send(f"{receiver.url}/always-failing", {"id": "j1", "status": "finished"})
    sender.send("http://127.0.0.1:1/unreachable", {"id": "j2", "status": "failed"})  # connection refused
    sender.close(timeout=10)
    assert [d.path for d in receiver.deliveries] == ["/always-failing"] * 3
    assert all(d.verifies() for d in receiver.deliveries)
    assert json.loads(receiver.deliveries[0].body) == {"id": "j1", "status": "finished"}


@pytest.mark.timeout(30)
def test_without_a_secret_deliveries_are_unsigned(receiver, monkeypatch):
    monkeypatch.delenv("LATENTQ_WEBHOOK_SECRET", raising=False)
    sender = WebhookSender()
    assert not sender.secret
    sender.send(f"{receiver.url}/plain", {"id": "j3"})
    sender.close(timeout=10)
    (delivery,) = receiver.deliveries
    assert SIGNATURE_HEADER.lower() not in delivery.headers and TIMESTAMP_HEADER.lower() in delivery.headers
    assert not delivery.verifies()


@pytest.mark.timeout(120)
def test_a_job_canceled_through_the_api_sends_its_webhook(signed_procs, receiver):
    api = signed_procs.api()  # no worker: the job stays queued until canceled
    job = Client().submit(torch.randn(32, 4, 4), model="taef2", callback_url=f"{receiver.url}/hooks/canceled")
    assert httpx.delete(f"{api}/v1/jobs/{job.id}", timeout=30).status_code == 200
    wait_until(lambda: len(receiver.deliveries) >= 1, 30)
    (delivery,) = receiver.deliveries
    assert delivery.path == "/hooks/canceled" and delivery.verifies()
    body = json.loads(delivery.body)
    assert body["id"] == job.id and body["status"] == "canceled"


@pytest.mark.timeout(60)
def test_a_producer_cancel_sends_the_webhook_by_close(receiver, env, monkeypatch):
    monkeypatch.setenv("LATENTQ_WEBHOOK_SECRET", SECRET)
    with Client() as client:
        job = client.submit(torch.randn(32, 4, 4), model="taef2", callback_url=f"{receiver.url}/hooks/mine")
        assert client.cancel(job.id).status.value == "canceled"
    # close() delivered it
    assert [d.path for d in receiver.deliveries] == ["/hooks/mine"]
    assert json.loads(receiver.deliveries[0].body)["status"] == "canceled" and receiver.deliveries[0].verifies()
