"""The worker's batched Redis paths against a real Redis: pops, histograms, device defaults."""

from __future__ import annotations

import pytest
import torch
from rq import Queue
from rq.serializers import JSONSerializer

from latentq import Client, keys, metrics
from latentq.models.loader import load_model
from latentq.models.registry import load_registry
from latentq.store import LocalStore
from latentq.worker import DecodeWorker
from latentq.worker.reliable_queue import ReliableQueue

pytestmark = pytest.mark.timeout(60)


def model_queues(connection) -> list[Queue]:
    return [ReliableQueue(name, connection=connection, serializer=JSONSerializer)
            for name in (keys.high_priority_queue_name("taef2"), keys.queue_name("taef2"))]  # fmt: skip


def test_pop_many_takes_high_priority_first_keeps_ids_in_intermediate_lists_and_skips_gone_jobs(env, redis_conn):
    client = Client()
    normal = client.submit_many(torch.randn(4, 32, 2, 2), model="taef2")
    high = client.submit(torch.randn(32, 2, 2), model="taef2", priority="high")
    redis_conn.delete(f"rq:job:{normal[1].id}")  # a job whose record is gone (deleted, expired)
    queues = model_queues(redis_conn)

    popped = ReliableQueue.pop_many(queues, 3, redis_conn, serializer=JSONSerializer)

    assert [job.id for job, _ in popped] == [high.id, normal[0].id]  # 3 ids moved, one of them gone
    assert [queue.name for _, queue in popped] == [keys.high_priority_queue_name("taef2"), keys.queue_name("taef2")]
    intermediate = [i.decode() for q in queues for i in redis_conn.lrange(q.intermediate_queue_key, 0, -1)]
    assert intermediate == [high.id, normal[0].id]  # held in Redis until started; the gone id dropped
    assert redis_conn.lrange(queues[1].key, 0, -1) == [normal[2].id.encode(), normal[3].id.encode()]


def test_dequeue_reports_how_many_jobs_wait_behind_the_popped_one(env, redis_conn):
    client = Client()
    jobs = client.submit_many(torch.randn(3, 32, 2, 2), model="taef2")
    queues = model_queues(redis_conn)

    first, _ = ReliableQueue.dequeue_any(queues, None, connection=redis_conn, serializer=JSONSerializer)
    assert first.id == jobs[0].id and first.waiting_behind == 2
    ReliableQueue.pop_many(queues, 5, redis_conn, serializer=JSONSerializer)
    client.submit(torch.randn(32, 2, 2), model="taef2")
    last, _ = ReliableQueue.dequeue_any(queues, 1, connection=redis_conn, serializer=JSONSerializer)
    assert last.waiting_behind == 0
    assert ReliableQueue.dequeue_any(queues, None, connection=redis_conn, serializer=JSONSerializer) is None


def test_histograms_store_one_bucket_per_observation_and_render_cumulative(redis_conn):
    batch = metrics.MetricsBatch()
    for seconds in (0.003, 0.02, 0.02, 100.0):
        batch.observe("taef2", "store_seconds", seconds)
    batch.status("taef2", "finished", 4)
    with redis_conn.pipeline() as pipe:
        batch.write(pipe)
        pipe.execute()
    stored = {k.decode(): v.decode() for k, v in redis_conn.hgetall(keys.metrics_key("taef2")).items()}
    assert {k for k in stored if k.startswith("store_seconds_bucket")} == {
        "store_seconds_bucket:0.005", "store_seconds_bucket:0.025", "store_seconds_bucket:+Inf"}  # fmt: skip

    text = metrics.render(redis_conn, ["taef2"], {"taef2": 0}, {"taef2": 1})
    assert 'latentq_store_seconds_bucket{model="taef2",le="0.0025"} 0' in text
    assert 'latentq_store_seconds_bucket{model="taef2",le="0.005"} 1' in text
    assert 'latentq_store_seconds_bucket{model="taef2",le="0.025"} 3' in text
    assert 'latentq_store_seconds_bucket{model="taef2",le="60"} 3' in text
    assert 'latentq_store_seconds_bucket{model="taef2",le="+Inf"} 4' in text
    assert 'latentq_store_seconds_count{model="taef2"} 4' in text
    assert 'latentq_store_seconds_sum{model="taef2"} 100.043' in text
    assert 'latentq_jobs_total{model="taef2",status="finished"} 4' in text


def test_a_cpu_worker_batches_small_images_only_and_encodes_in_line(env, models_file, redis_conn, tmp_path):
    model = load_model(load_registry(models_file).get("taef2"), "cpu")
    store = LocalStore(tmp_path / "store")
    default = DecodeWorker({"taef2": model}, redis_conn, store, name="defaults")
    assert (default.max_batch, default.max_batch_pixels, default.encode_threads) == (32, 256 * 256, 0)
    chosen = DecodeWorker({"taef2": model}, redis_conn, store, name="chosen", max_batch=8, max_batch_pixels=None,
                          encode_threads=2)  # fmt: skip
    assert (chosen.max_batch, chosen.max_batch_pixels, chosen.encode_threads) == (8, None, 2)
    for worker in (default, chosen):
        worker._committer.close()
        worker._pool.shutdown()
