"""Admission: caps that concurrent producers cannot overshoot, idempotent submits, fair-share order.

Real Redis, real ``Client``s; no worker (the queue's order and contents are what is checked).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from latentq import Client
from latentq.config import Settings
from latentq.errors import QueueFull, RateLimited
from latentq.state.tenants import Tenant, TenantDirectory

pytestmark = pytest.mark.timeout(120)

LATENT = torch.zeros(1, 32, 4, 4)


def client(redis_url: str, models_file, tenant: str = "default", **settings) -> Client:
    return Client(settings=Settings(redis_url=redis_url, models_file=str(models_file), **settings), tenant=tenant)


def queue_ids(c: Client, model: str = "taef2") -> list[str]:
    return [i.decode() for i in c.connection.lrange(c.queue(model).key, 0, -1)]


def tenant_of(c: Client, job_id: str) -> str:
    return RQJob.fetch(job_id, connection=c.connection, serializer=JSONSerializer).meta["tenant"]


def test_a_flooding_tenant_does_not_starve_another(redis_url, models_file):
    a, b = client(redis_url, models_file, "a"), client(redis_url, models_file, "b")
    a_jobs = [a.submit(LATENT, model="taef2") for _ in range(60)]
    b_jobs = [b.submit(LATENT, model="taef2") for _ in range(5)]
    order = queue_ids(a)
    assert sorted(order) == sorted(j.id for j in a_jobs + b_jobs)  # every job queued exactly once
    positions = [order.index(j.id) for j in b_jobs]
    # B's k-th job is queued right after A's (k+1)-th: it waits for about one of A's jobs each.
    assert positions == [2, 4, 6, 8, 10], positions
    assert [order.index(j.id) for j in a_jobs] == sorted(order.index(j.id) for j in a_jobs)  # A stays FIFO
    assert tenant_of(a, b_jobs[0].id) == "b"


def test_fair_order_survives_pops_and_a_batch(redis_url, models_file):
    a, b = client(redis_url, models_file, "a"), client(redis_url, models_file, "b")
    a.submit_many(torch.zeros(20, 32, 4, 4), model="taef2")
    for _ in range(8):  # a worker takes the first eight (what an RQ pop does)
        a.connection.lpop(a.queue("taef2").key)
    b_first = b.submit(LATENT, model="taef2")
    order = queue_ids(a)
    assert order.index(b_first.id) <= 2, order.index(b_first.id)
    single = client(redis_url, models_file, "a")
    tail = single.submit(LATENT, model="taef2")
    assert queue_ids(a)[-1] == tail.id  # A's new job goes behind its own backlog


def test_concurrent_submits_never_overshoot_the_model_cap(redis_url, models_file):
    clients = [client(redis_url, models_file, max_queued=6) for _ in range(5)]
    start = threading.Barrier(50)

    def submit(i: int) -> str:
        start.wait()
        try:
            clients[i % 5].submit(LATENT, model="taef2")
            return "accepted"
        except QueueFull:
            return "refused"

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(submit, range(50)))
    assert outcomes.count("accepted") == 6
    assert len(queue_ids(clients[0])) == 6


def test_tenant_cap_counts_only_jobs_still_queued(redis_url, models_file):
    TenantDirectory(Client(redis_url).connection).create_key("small", max_queued=3)
    c = client(redis_url, models_file, "small")
    jobs = [c.submit(LATENT, model="taef2") for _ in range(3)]
    with pytest.raises(QueueFull, match="tenant small has 3 jobs queued; its limit is 3"):
        c.submit(LATENT, model="taef2")
    jobs[0].cancel()
    c.submit(LATENT, model="taef2")  # the canceled job no longer counts
    other = client(redis_url, models_file, "other")
    other.submit(LATENT, model="taef2")  # another tenant is not limited by it


def test_the_tenant_count_of_queued_jobs_stays_bounded_under_steady_traffic(redis_url, models_file):
    """The count behind a tenant's cap holds job ids until they are met again at the cap: an uncapped tenant
    keeps none (its key was refreshed by every submit and grew by every job, forever), a capped one at most
    its cap plus one submit's jobs, however many of its jobs have come and gone."""
    from latentq.state import keys

    plain = client(redis_url, models_file)
    for _ in range(30):
        for job in plain.submit_many(torch.zeros(4, 32, 4, 4), model="taef2"):
            job.cancel()  # gone from the queue, as a finished job is
    assert not plain.connection.exists(keys.tenant_queued_key("default"))

    TenantDirectory(plain.connection).create_key("capped", max_queued=5)
    capped = client(redis_url, models_file, "capped")
    for _ in range(30):
        for job in capped.submit_many(torch.zeros(4, 32, 4, 4), model="taef2"):
            job.cancel()
        assert capped.connection.zcard(keys.tenant_queued_key("capped")) <= 5 + 4


def test_a_submit_at_the_tenant_cap_checks_a_bounded_number_of_its_oldest_jobs(redis_url, models_file):
    """Each submit at the cap looks at the oldest TENANT_PRUNE_SCAN counted jobs only (a refusal must not
    cost Redis a walk over all of a tenant's jobs); what it finds gone is forgotten, a little per submit."""
    from latentq.state import keys
    from latentq.state.admission import TENANT_PRUNE_SCAN

    cap = TENANT_PRUNE_SCAN + 100
    TenantDirectory(Client(redis_url).connection).create_key("busy", max_queued=cap)
    c = client(redis_url, models_file, "busy", max_queued=10 * cap)
    jobs = c.submit_many(torch.zeros(cap, 32, 4, 4), model="taef2")
    with pytest.raises(QueueFull):  # all still queued: nothing to forget
        c.submit(LATENT, model="taef2")
    for job in jobs:
        job.cancel()
    c.submit(LATENT, model="taef2")  # the oldest TENANT_PRUNE_SCAN forgotten: room again
    assert c.connection.zcard(keys.tenant_queued_key("busy")) == cap - TENANT_PRUNE_SCAN + 1


def test_rate_limit_refuses_with_a_retry_after(redis_url, models_file):
    c = client(redis_url, models_file)
    tenant = Tenant("slow", rate=1.0)
    c.service.submit(LATENT, _request(), tenant=tenant)
    with pytest.raises(RateLimited) as refused:
        c.service.submit(LATENT, _request(), tenant=tenant)
    assert refused.value.retry_after == 1
    assert isinstance(refused.value, QueueFull)  # callers that handle backpressure handle this too


def _request():
    from latentq.core.request import DecodeRequest

    return DecodeRequest(model="taef2", output_format="png")


def test_idempotency_key_returns_the_first_submit(redis_url, models_file):
    a, b = client(redis_url, models_file, "a"), client(redis_url, models_file, "b")
    first = a.submit(LATENT, model="taef2", idempotency_key="gen-42")
    again = a.submit(LATENT, model="taef2", idempotency_key="gen-42")
    assert again.id == first.id
    other_tenant = b.submit(LATENT, model="taef2", idempotency_key="gen-42")
    assert other_tenant.id != first.id
    batch = a.submit_many(torch.zeros(3, 32, 4, 4), model="taef2", idempotency_key="batch-1")
    replay = a.submit_many(torch.zeros(3, 32, 4, 4), model="taef2", idempotency_key="batch-1")
    assert [j.id for j in replay] == [j.id for j in batch] and replay[0].batch_id == batch[0].batch_id
    assert len(queue_ids(a)) == 2 + 3


def test_concurrent_retries_with_one_key_make_one_job(redis_url, models_file):
    clients = [client(redis_url, models_file, "a") for _ in range(4)]
    start = threading.Barrier(20)

    def submit(i: int) -> str:
        start.wait()
        return clients[i % 4].submit(LATENT, model="taef2", idempotency_key="same").id

    with ThreadPoolExecutor(20) as pool:
        ids = set(pool.map(submit, range(20)))
    assert len(ids) == 1 and queue_ids(clients[0]) == list(ids)
