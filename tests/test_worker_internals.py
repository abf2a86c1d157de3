"""The worker's batched Redis paths against a real Redis: pops, histograms, device defaults."""

from __future__ import annotations

import pytest
import torch
from rq import Queue
from rq.serializers import JSONSerializer

from latentq import Client
from latentq.models.loader import load_model
from latentq.models.registry import load_registry
from latentq.state import keys, metrics
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


def cpu_worker(models_file, redis_conn, tmp_path, name: str, **options) -> DecodeWorker:
    model = load_model(load_registry(models_file).get("taef2"), "cpu")
    return DecodeWorker({"taef2": model}, redis_conn, LocalStore(tmp_path / "store"), name=name, **options)


def close(worker: DecodeWorker) -> None:
    worker.finisher.close()


def test_intake_starts_the_popped_job_and_what_waits_behind_it_in_four_round_trips(env, models_file, redis_conn,
                                                                                      tmp_path):  # fmt: skip
    client = Client()
    jobs = client.submit_many(torch.randn(3, 32, 2, 2), model="taef2")
    worker = cpu_worker(models_file, redis_conn, tmp_path, "intake", max_wait_ms=0)
    worker.register_birth()
    queues = worker.model_queues("taef2")

    first, queue = ReliableQueue.dequeue_any(queues, None, connection=redis_conn, serializer=JSONSerializer)
    assert first.id == jobs[0].id and first.origin == keys.queue_name("taef2")
    calls: list[str] = []
    original_eval, original_pipeline = redis_conn.eval, redis_conn.pipeline

    def counting_pipeline(*args, **kwargs):  # a round trip is a pipeline sent, not one built and left unsent
        pipe = original_pipeline(*args, **kwargs)
        execute = pipe.execute
        pipe.execute = lambda *a, **k: calls.append("pipeline") or execute(*a, **k)
        return pipe

    original_evalsha = redis_conn.evalsha

    def counted(call):  # a script run is one round trip (an EVALSHA the server did not know is retried as EVAL)
        def run(*args, **kwargs):
            reply = call(*args, **kwargs)
            calls.append("eval")
            return reply
        return run

    redis_conn.eval, redis_conn.evalsha = counted(original_eval), counted(original_evalsha)
    redis_conn.pipeline = counting_pipeline
    try:
        batch = worker.intake.take(first, queue)
    finally:
        redis_conn.eval, redis_conn.evalsha, redis_conn.pipeline = original_eval, original_evalsha, original_pipeline

    assert [job.id for job in batch.jobs] == [job.id for job in jobs]
    assert all(item.blob for item in batch.items) and first.kwargs["request"]["model"] == "taef2"
    assert [client.job_info(job.id).status.value for job in jobs] == ["started"] * 3
    assert first.get_status(refresh=False).value == "started" and first.worker_name == "intake"
    assert redis_conn.llen(queue.intermediate_queue_key) == 0
    # the popped job's fenced start; one Lua pop of the others; their records; their fenced start
    assert calls == ["eval", "eval", "pipeline", "eval"]
    close(worker)


def test_intake_skips_a_popped_job_whose_record_is_gone_and_leaves_nothing_behind(env, models_file, redis_conn,
                                                                                    tmp_path):  # fmt: skip
    job = Client().submit(torch.randn(32, 2, 2), model="taef2")
    redis_conn.delete(f"rq:job:{job.id}")
    worker = cpu_worker(models_file, redis_conn, tmp_path, "gone")
    worker.register_birth()
    popped, queue = ReliableQueue.dequeue_any(worker.model_queues("taef2"), None, connection=redis_conn,
                                              serializer=JSONSerializer)  # fmt: skip

    batch = worker.intake.take(popped, queue)

    assert batch.items == []
    assert not redis_conn.exists(f"rq:job:{job.id}", f"latentq:latent:{job.id}")
    assert redis_conn.zcard(queue.started_job_registry.key) == 0
    assert redis_conn.llen(queue.intermediate_queue_key) == 0
    close(worker)


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
    default = cpu_worker(models_file, redis_conn, tmp_path, "defaults")
    assert (default.max_batch, default.max_batch_pixels, default.encode_threads) == (32, 2 * 128 * 128, 0)
    chosen = cpu_worker(models_file, redis_conn, tmp_path, "chosen", max_batch=8, max_batch_pixels=None,
                        encode_threads=2)  # fmt: skip
    assert (chosen.max_batch, chosen.max_batch_pixels, chosen.encode_threads) == (8, None, 2)
    close(default)
    close(chosen)


def test_decode_metric_is_the_batchs_own_decode_time_and_compile_fallbacks_are_counted(env, models_file, redis_conn,
                                                                                       tmp_path):  # fmt: skip
    """decode_seconds is the items' decode_ms (on CUDA, events: decode_group returns before the GPU is done), not
    the wall clock around the call; eager fallbacks of --compile reach /metrics and the worker's stats."""
    from latentq.models.compiled import compile_decoder

    jobs = Client().submit_many(torch.randn(3, 32, 4, 4), model="taef2", output_format="uint8")
    worker = cpu_worker(models_file, redis_conn, tmp_path, "timed", max_wait_ms=0)
    # A bound of 0 compiled shapes: every decoder call runs eager (and nothing is compiled, so this is cheap).
    model = worker.models["taef2"]
    model.compiled = compile_decoder(model.module, 0)
    worker.work(burst=True)
    close(worker)

    infos = [job.info() for job in jobs]
    assert [info.status.value for info in infos] == ["finished"] * 3 and {i.batch_size for i in infos} == {3}
    assert len({info.timings["decode"] for info in infos}) == 1  # one batch, one decode time
    stored = {k.decode(): v.decode() for k, v in redis_conn.hgetall(keys.metrics_key("taef2")).items()}
    assert stored["batch_size_sum"] == "3"
    # decode_ms is kept to 3 decimals (1 us): the metric is that time, observed once for the batch
    assert abs(float(stored["decode_seconds_sum"]) - infos[0].timings["decode"] / 1000) <= 1e-6
    text = metrics.render(redis_conn, ["taef2"], {}, {})
    assert 'latentq_decode_seconds_count{model="taef2"} 1' in text
    eager = model.compiled.eager_calls
    assert eager >= 1 and f'latentq_compile_eager_calls_total{{model="taef2"}} {eager}' in text
    assert int(redis_conn.hget(keys.worker_stats_key(worker.name), "compile_eager_calls")) == eager
    assert model.compiled.drain_eager_calls() == 0  # taken once, by the write


def test_a_model_that_cannot_be_loaded_again_fails_its_jobs_and_the_worker_serves_on(env, models_file, redis_conn,
                                                                                     tmp_path):  # fmt: skip
    """Under --model-memory-budget an evicted model is loaded again when its jobs come: if that fails (weights
    gone, out of memory), each job ends failed with the reason, once its retries are spent; the worker stays up."""
    from latentq.errors import ModelLoadError
    from latentq.worker.model_cache import ModelCache

    def weights_gone(spec):
        raise ModelLoadError(f"cannot load {spec.name}: weights gone")

    cache = ModelCache({"taef2": load_registry(models_file).get("taef2")}, weights_gone)  # nothing loaded yet
    jobs = Client().submit_many(torch.randn(2, 32, 4, 4), model="taef2")
    worker = DecodeWorker(cache, redis_conn, LocalStore(tmp_path / "store"), name="reload", max_wait_ms=0)
    worker.work(burst=True)
    close(worker)

    infos = [job.info() for job in jobs]
    assert [info.status.value for info in infos] == ["failed", "failed"]
    assert all("cannot load model taef2" in info.error and "weights gone" in info.error for info in infos)


class _GatedStore(LocalStore):
    """A store whose writes wait for ``gate``: encoders that cannot keep up."""

    def __init__(self, root, gate) -> None:
        super().__init__(root)
        self.gate = gate

    def put(self, key, data, content_type=None):
        self.gate.wait(30)
        return super().put(key, data, content_type)


def test_a_decode_loop_waiting_for_a_free_encoder_is_counted(env, models_file, redis_conn, tmp_path):
    """Encoders behind the decodes hold the loop at its bound of pending outputs; that wait is what tells an
    operator to raise --encode-threads: latentq_encode_wait_seconds_total and the worker's encode_wait_ms."""
    import threading

    jobs = Client().submit_many(torch.randn(4, 32, 2, 2), model="taef2", output_format="uint8")
    gate = threading.Event()
    model = load_model(load_registry(models_file).get("taef2"), "cpu")
    worker = DecodeWorker({"taef2": model}, redis_conn, _GatedStore(tmp_path / "store", gate), name="slow-encoders",
                          max_batch=1, max_wait_ms=0, encode_threads=1)  # fmt: skip
    blocked = threading.Event()
    pending = worker.finisher.pending

    class Watched:  # the worker's bound of pending outputs, telling us when the loop blocks on it
        def acquire(self, blocking=True, timeout=-1):
            if pending.acquire(blocking=False):
                return True
            if not blocking:
                return False
            blocked.set()
            return pending.acquire()

        def release(self):
            pending.release()

    worker.finisher.pending = Watched()
    opener = threading.Thread(target=lambda: blocked.wait(30) and gate.set(), daemon=True)
    opener.start()
    worker.work(burst=True)
    close(worker)
    opener.join(5)

    assert blocked.is_set(), "the decode loop never waited for an encoder"
    assert [job.info().status.value for job in jobs] == ["finished"] * 4
    text = metrics.render(redis_conn, ["taef2"], {}, {})
    line = next(row for row in text.splitlines() if row.startswith("latentq_encode_wait_seconds_total{"))
    assert float(line.split()[-1]) > 0


@pytest.mark.unit
def test_gpu_workers_encode_on_half_the_cores_from_4_to_16():
    from latentq.worker.defaults import gpu_encode_threads

    assert [gpu_encode_threads(cpus) for cpus in (1, 2, 8, 10, 16, 32, 64)] == [4, 4, 4, 5, 8, 16, 16]
    assert gpu_encode_threads() >= 4  # this machine's own
