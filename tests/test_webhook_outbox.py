"""The webhook outbox: deliveries kept in Redis, made by any live worker or API, verified with standardwebhooks.

Real parts throughout: Redis servers, worker and API processes, a local HTTP receiver, and the
``standardwebhooks`` package checking every signature. Faults (a SIGKILLed worker, a Redis crash) are
made at chosen moments; every wait is on a condition (the receiver's deliveries, the outbox emptying).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time

import httpx
import pytest
import torch
from helpers import StockWorker, wait_until
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer
from webhook_receiver import SECRET, Receiver

from latentq import Client
from latentq.local.redis_server import EmbeddedRedis
from latentq.state import keys
from latentq.state.lifecycle import Ending, end_jobs
from latentq.webhooks.outbox import Drainer, pending
from latentq.webhooks.sender import WebhookSender


@pytest.fixture(autouse=True)
def webhook_env(monkeypatch):
    """The receiver listens on 127.0.0.1 (allowed here); short backoffs and timeouts keep the tests quick.

    Autouse fixtures come first, so the ``env`` the processes get carries these too.
    """
    for name, value in {"LATENTQ_WEBHOOK_ALLOW": "127.0.0.1", "LATENTQ_WEBHOOK_SECRET": SECRET,
                        "LATENTQ_WEBHOOK_BACKOFF": "0.2", "LATENTQ_WEBHOOK_TIMEOUT": "2"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def latent() -> torch.Tensor:
    return torch.randn(32, 4, 4)


def outbox_empty(connection: Redis) -> bool:
    """No delivery left to make: nothing in the stream, nothing scheduled, no attempt counted."""
    return (pending(connection) == 0 and connection.zcard(keys.WEBHOOK_DUE) == 0
            and connection.hlen(keys.WEBHOOK_ATTEMPTS) == 0)  # fmt: skip


def drainer(connection: Redis, **options) -> Drainer:
    options = {"attempts": 8, "backoff_s": 0.05, "timeout_s": 2.0, **options}
    return Drainer(connection, sender=WebhookSender(SECRET, timeout_s=2.0, allow=["127.0.0.1"]), **options)


def assert_standard(delivery, job_id: str, status: str) -> None:
    """One delivery as the Standard Webhooks spec has it, for this job event."""
    assert delivery.verifies(), delivery.headers  # standardwebhooks.Webhook(...).verify
    assert not delivery.verifies("another-secret")
    assert delivery.msg_id == f"msg_{job_id}_{status}"
    assert delivery.headers["content-type"] == "application/json"
    payload = delivery.payload
    assert set(payload) == {"type", "timestamp", "data"} and payload["type"] == f"job.{status}"
    assert payload["timestamp"].endswith("Z") and payload["data"]["id"] == job_id
    assert payload["data"]["status"] == status


# ---------------------------------------------------------------- the test 5


@pytest.mark.timeout(600)
def test_a_sigkilled_workers_webhooks_are_all_delivered_by_another_process(procs, receiver, redis_conn):
    """20 jobs finish; the receiver refuses every delivery until the worker is SIGKILLed; then a second
    worker and the API drain the outbox: every job's event arrives, once per webhook-id, signed."""
    # Refused attempts back off exponentially (from 0.1 s here), so the next one after the kill comes about
    # as long after as the first worker lived: the wait below is scaled by that, not a fixed margin a busy
    # machine can overrun; attempts are not exhausted meanwhile.
    procs.env = {**procs.env, "LATENTQ_WEBHOOK_BACKOFF": "0.1", "LATENTQ_WEBHOOK_ATTEMPTS": "60"}
    killed = threading.Event()
    receiver.respond = lambda delivery: 200 if killed.is_set() else 503
    client = Client()
    jobs = [client.submit(latent(), model="taef2", callback_url=f"{receiver.url}/hooks/{i}") for i in range(20)]
    started = time.monotonic()
    first = procs.worker("taef2", name="doomed")
    for job in jobs:
        job.wait(120)
    # Every webhook is queued in Redis by now (each in its job's end transaction), none delivered.
    assert len(receiver.accepted()) == 0 and pending(redis_conn) == 20
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    killed.set()
    lived = time.monotonic() - started

    procs.worker("taef2", name="heir")
    procs.api()
    wait_until(lambda: len(receiver.by_id()) == 20 and outbox_empty(redis_conn), 2 * lived + 120)

    delivered = receiver.by_id()
    assert sorted(delivered) == sorted(f"msg_{job.id}_finished" for job in jobs)
    for job in jobs:
        delivery = delivered[f"msg_{job.id}_finished"]
        assert_standard(delivery, job.id, "finished")
        assert delivery.data["results"][0]["key"] == job.info().results[0].key
    # Retries of one event carry its one id and the same body, each attempt signed anew.
    for msg_id in delivered:
        attempts = [d for d in receiver.deliveries if d.msg_id == msg_id]
        assert len({d.body for d in attempts}) == 1 and all(d.verifies() for d in attempts)
    assert all(d.status == 503 for d in receiver.deliveries if d.status != 200)
    assert int(redis_conn.hget(keys.metrics_key("taef2"), "webhooks_total:delivered")) == 20


# ---------------------------------------------------------------- every ending sends its webhook


@pytest.mark.timeout(240)
def test_canceled_and_expired_jobs_send_theirs(procs, receiver, redis_conn):
    client = Client()  # no worker serves taef2 yet: the jobs stay queued
    canceled = client.submit(latent(), model="taef2", callback_url=f"{receiver.url}/hooks/canceled")
    expiring = client.submit(latent(), model="taef2", callback_url=f"{receiver.url}/hooks/expired",
                             deadline=time.time() + 0.5)  # fmt: skip
    late_deadline = time.time() + 0.5
    late = client.submit(latent(), model="taef2", callback_url=f"{receiver.url}/hooks/late", deadline=late_deadline)
    quiet = client.submit(latent(), model="taef2")  # no callback_url: no webhook
    client.cancel(canceled.id)
    client.cancel(quiet.id)
    wait_until(lambda: client.job_info(expiring.id).status.value == "expired", 30)  # expired as it is read
    assert pending(redis_conn) == 2  # queued by the ends themselves: this Client delivers nothing
    client.close()

    wait_until(lambda: time.time() > late_deadline, 30)
    procs.worker("taef2")  # pops `late` past its deadline: the worker expires it
    api = procs.api()  # the API drains the outbox too
    wait_until(lambda: len(receiver.by_id()) == 3 and outbox_empty(redis_conn), 60)
    metrics = httpx.get(f"{api}/metrics", timeout=30).text
    assert 'latentq_webhooks_total{model="taef2",outcome="delivered"} 3' in metrics
    assert 'latentq_webhooks_total{model="taef2",outcome="failed"} 0' in metrics
    delivered = receiver.by_id()
    assert_standard(delivered[f"msg_{canceled.id}_canceled"], canceled.id, "canceled")
    assert_standard(delivered[f"msg_{expiring.id}_expired"], expiring.id, "expired")
    assert_standard(delivered[f"msg_{late.id}_expired"], late.id, "expired")
    assert delivered[f"msg_{canceled.id}_canceled"].path == "/hooks/canceled"
    for job in (expiring, late):
        assert "deadline" in delivered[f"msg_{job.id}_expired"].data["error"].lower()
    assert delivered[f"msg_{late.id}_expired"].data["worker"]  # the worker ended it
    assert len(receiver.deliveries) == 3


@pytest.mark.timeout(60)
def test_an_ending_the_fence_refuses_queues_no_webhook(env, redis_conn):
    """The outbox entry is one of the end's fenced writes: it lands with the end, or not at all."""
    client = Client()
    job = client.submit(latent(), model="taef2", callback_url="http://127.0.0.1:9/hook")
    redis_conn.set(keys.lease_key(job.id), "a-worker's-token")  # a worker popped it: a cancel is refused
    assert end_jobs(redis_conn, [Ending(client.service._fetch(job.id), "canceled")]) == [False]
    assert pending(redis_conn) == 0
    redis_conn.delete(keys.lease_key(job.id))
    assert end_jobs(redis_conn, [Ending(client.service._fetch(job.id), "canceled")]) == [True]
    ((_, fields),) = redis_conn.xrange(keys.WEBHOOK_OUTBOX)
    assert fields[b"id"].decode() == f"msg_{job.id}_canceled" and fields[b"url"] == b"http://127.0.0.1:9/hook"
    assert fields[b"model"] == b"taef2" and fields[b"job"].decode() == job.id
    client.close()


@pytest.mark.timeout(120)
def test_a_job_run_by_rqs_own_worker_queues_its_webhook_too(env, redis_conn):
    """The plain RQ task (``rq worker`` running ``decode_job``) queues the finished job's webhook as well."""
    client = Client()
    job = client.submit(latent(), model="taef2", callback_url="http://127.0.0.1:9/hook")
    queue = Queue(keys.queue_name("taef2"), connection=redis_conn, serializer=JSONSerializer)
    StockWorker([queue], connection=redis_conn, serializer=JSONSerializer).work(burst=True)
    assert client.job_info(job.id).status.value == "finished"
    ((_, fields),) = redis_conn.xrange(keys.WEBHOOK_OUTBOX)
    payload = json.loads(fields[b"body"])
    assert fields[b"id"].decode() == f"msg_{job.id}_finished" and payload["type"] == "job.finished"
    assert payload["data"]["status"] == "finished"
    assert [r["key"] for r in payload["data"]["results"]] == [r.key for r in client.job_info(job.id).results]
    client.close()


# ---------------------------------------------------------------- retries, in process


@pytest.mark.timeout(60)
def test_retries_keep_the_webhook_id_and_back_off_then_give_up(env, redis_conn, receiver, caplog):
    client = Client()
    flaky = client.submit(latent(), model="taef2", callback_url=f"{receiver.url}/flaky")
    dead = client.submit(latent(), model="taef2", callback_url=f"{receiver.url}/dead")

    def respond(delivery) -> int:  # /dead always fails; /flaky fails its first two attempts
        earlier = sum(d.path == "/flaky" for d in receiver.deliveries)
        return 500 if delivery.path == "/dead" or earlier < 2 else 200

    receiver.respond = respond
    client.cancel(flaky.id)
    client.cancel(dead.id)
    outbox = drainer(redis_conn, attempts=4, backoff_s=0.1).start()
    try:
        with caplog.at_level(logging.WARNING, logger="latentq.webhooks"):
            wait_until(lambda: outbox_empty(redis_conn), 30)
    finally:
        outbox.stop()

    flaky_tries = [d for d in receiver.deliveries if d.path == "/flaky"]
    dead_tries = [d for d in receiver.deliveries if d.path == "/dead"]
    assert [d.status for d in flaky_tries] == [500, 500, 200]  # delivered on the third attempt
    assert [d.status for d in dead_tries] == [500] * 4  # given up after the fourth
    for tries, job in ((flaky_tries, flaky), (dead_tries, dead)):
        assert {d.msg_id for d in tries} == {f"msg_{job.id}_canceled"}  # one id across retries
        assert len({d.body for d in tries}) == 1 and all(d.verifies() for d in tries)
    # Exponential backoff: 0.1, 0.2, 0.4 s at least between one event's attempts.
    gaps = [b.at - a.at for a, b in zip(dead_tries, dead_tries[1:])]
    assert all(gap >= 0.1 * 2**i for i, gap in enumerate(gaps)), gaps
    assert [r for r in caplog.records if "given up" in r.getMessage()][0].levelno == logging.WARNING
    counts = redis_conn.hgetall(keys.metrics_key("taef2"))
    assert counts[b"webhooks_total:delivered"] == b"1" and counts[b"webhooks_total:failed"] == b"1"
    client.close()


@pytest.mark.timeout(60)
def test_an_attempt_whose_drainer_died_is_made_again_after_its_lease(env, redis_conn, receiver):
    """A drainer that took an entry and died (its attempt never ended) leaves it to the others."""
    client = Client()
    job = client.submit(latent(), model="taef2", callback_url=f"{receiver.url}/orphan")
    client.cancel(job.id)
    crashed = drainer(redis_conn, consumer="crashed", timeout_s=1.0)
    crashed._ensure_group()
    crashed._read_new(10)
    (taken,) = crashed._take(1)  # taken, its lease (5 s) running, and never attempted
    assert taken.attempt == 1 and receiver.deliveries == []
    survivor = drainer(redis_conn, consumer="survivor").start()
    try:
        wait_until(lambda: outbox_empty(redis_conn), 30)
    finally:
        survivor.stop()
    (delivery,) = receiver.deliveries
    assert_standard(delivery, job.id, "canceled")
    client.close()


@pytest.mark.timeout(60)
def test_entries_a_dead_consumer_read_but_never_scheduled_are_reclaimed(env, redis_conn, receiver, monkeypatch):
    """A drainer that died between reading new entries and scheduling them: XAUTOCLAIM adopts them."""
    import latentq.webhooks.outbox as outbox

    client = Client()
    jobs = [client.submit(latent(), model="taef2", callback_url=f"{receiver.url}/hooks/{i}") for i in range(3)]
    for job in jobs:
        client.cancel(job.id)
    crashed = drainer(redis_conn, consumer="crashed")
    crashed._ensure_group()
    redis_conn.xreadgroup(keys.WEBHOOK_GROUP, "crashed", {keys.WEBHOOK_OUTBOX: ">"}, count=10)  # then it died
    assert redis_conn.zcard(keys.WEBHOOK_DUE) == 0
    assert redis_conn.xpending(keys.WEBHOOK_OUTBOX, keys.WEBHOOK_GROUP)["pending"] == 3
    monkeypatch.setattr(outbox, "RECLAIM_IDLE_MS", 100)  # (60 s in service)
    monkeypatch.setattr(outbox, "RECLAIM_EVERY_S", 0.2)
    survivor = drainer(redis_conn, consumer="survivor").start()
    try:
        wait_until(lambda: outbox_empty(redis_conn), 30)
    finally:
        survivor.stop()
    assert sorted(receiver.by_id()) == sorted(f"msg_{job.id}_canceled" for job in jobs)
    assert redis_conn.xpending(keys.WEBHOOK_OUTBOX, keys.WEBHOOK_GROUP)["pending"] == 0
    client.close()


# ---------------------------------------------------------------- Redis restarts


@pytest.fixture
def durable_redis(monkeypatch):
    """A Redis of this test's own that writes every command to its AOF (a SIGKILL loses nothing)."""
    server = EmbeddedRedis(appendonly=True, appendfsync="always").start()
    monkeypatch.setenv("LATENTQ_REDIS_URL", server.url)
    yield server
    server.stop()


def logged(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in list(caplog.records) if text in r.getMessage()]


@pytest.mark.timeout(120)
def test_a_redis_crash_while_draining_loses_no_delivery(env, durable_redis, receiver, caplog):
    connection = Redis.from_url(durable_redis.url)
    client = Client(durable_redis.url)
    jobs = [client.submit(latent(), model="taef2", callback_url=f"{receiver.url}/hooks/{i}") for i in range(6)]
    healthy = threading.Event()
    receiver.respond = lambda d: 200 if healthy.is_set() else 503
    for job in jobs:
        client.cancel(job.id)
    outbox = drainer(Redis.from_url(durable_redis.url, socket_timeout=5), backoff_s=0.2).start()
    try:
        with caplog.at_level(logging.INFO, logger="latentq.webhooks"):
            # Every event tried (and refused) at least once: all are scheduled retries when Redis dies.
            wait_until(lambda: {d.msg_id for d in receiver.deliveries} == {f"msg_{j.id}_canceled" for j in jobs}, 30)
            durable_redis.kill()
            healthy.set()
            wait_until(lambda: logged(caplog, "Redis is unreachable"), 30)  # the drainer met the outage
            assert outbox._thread.is_alive()
            durable_redis.start()  # same port, same AOF
            wait_until(lambda: len(receiver.by_id()) == 6 and outbox_empty(connection), 60)
            assert outbox._thread.is_alive()
    finally:
        outbox.stop()
    assert sorted(receiver.by_id()) == sorted(f"msg_{job.id}_canceled" for job in jobs)
    assert all(d.verifies() for d in receiver.deliveries)
    # The outage is told once (not once per retry) and its end once; no traceback is logged.
    assert len(logged(caplog, "Redis is unreachable")) == 1 and len(logged(caplog, "Redis answers again")) == 1
    assert not any(r.exc_info for r in caplog.records)
    client.close()
    connection.close()
