"""latentq's worker leaves the Redis state RQ's stock SimpleWorker leaves (rqstate writes RQ's records itself)."""

from __future__ import annotations

import pytest
import torch
from helpers import StockWorker
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from latentq import Client
from latentq.config import Settings
from latentq.models.loader import load_model
from latentq.models.registry import load_registry
from latentq.state import keys, metrics
from latentq.store import LocalStore
from latentq.worker import DecodeWorker

pytestmark = [pytest.mark.timeout(120), pytest.mark.dependency_ends]


def rq_state(connection: Redis, job_id: str, worker_name: str) -> dict[str, tuple[str, str]]:
    """Every ``rq:*`` key with its type and shape (fields, members; values that are times or ids left out)."""
    state = {}
    for raw in connection.keys("rq:*"):
        key = raw.decode()
        kind = connection.type(key).decode()
        if kind == "hash":
            shape = sorted(f.decode() for f in connection.hkeys(key))
        elif kind == "zset":
            shape = [m.decode() for m in connection.zrange(key, 0, -1)]
        elif kind == "set":
            shape = sorted(m.decode() for m in connection.smembers(key))
        elif kind == "list":
            shape = [m.decode() for m in connection.lrange(key, 0, -1)]
        elif kind == "stream":
            shape = [sorted(f.decode() for f in entry[1]) for entry in connection.xrange(key)]
        else:
            shape = []
        name = key.replace(job_id, "<job>").replace(worker_name, "<worker>")
        state[name] = (kind, str(shape).replace(job_id, "<job>").replace(worker_name, "<worker>"))
    return state


def run_job(connection: Redis, worker_kind: str, break_latent: bool, tmp_path) -> tuple[str, dict, str]:
    job = Client(settings=Settings.from_env(max_retries=0)).submit(torch.randn(32, 4, 4), model="taef2")
    if break_latent:  # the job fails in the worker: its input is gone
        connection.delete(keys.latent_key(job.id))
    if worker_kind == "stock":
        queue = Queue(keys.queue_name("taef2"), connection=connection, serializer=JSONSerializer)
        worker = StockWorker([queue], connection=connection, serializer=JSONSerializer, name="stock")
    else:
        model = load_model(load_registry(Settings.from_env().models_file).get("taef2"))
        worker = DecodeWorker({"taef2": model}, connection, LocalStore(tmp_path / "store"), name="ours")
    worker.work(burst=True)
    status = connection.hget(f"rq:job:{job.id}", "status").decode()
    return status, rq_state(connection, job.id, worker.name), job.id


@pytest.mark.parametrize("break_latent", [False, True], ids=["finished", "failed"])
def test_the_worker_leaves_what_rqs_simple_worker_leaves(env, redis_conn, tmp_path, break_latent):
    stock_status, stock, stock_job = run_job(redis_conn, "stock", break_latent, tmp_path)
    if not break_latent:  # the plain task adds latentq's side of a finished job: record, metrics
        assert Client().records.read(stock_job, str) is not None
        assert metrics.jobs_total(redis_conn, "taef2")["finished"] == 1
    redis_conn.flushall()
    ours_status, ours, job_id = run_job(redis_conn, "latentq", break_latent, tmp_path)

    assert stock_status == ours_status == ("failed" if break_latent else "finished")
    assert ours == stock
    # and latentq's own keys of the job are gone with it: its latent and its lease
    assert not redis_conn.exists(keys.latent_key(job_id), keys.lease_key(job_id))
