"""Finished jobs outlive their Redis records: the job's record in the store answers afterwards.

With LATENTQ_RECORD_TTL=0 Redis drops a finished job's RQ record the moment it is marked finished,
the harshest case: status, results, wait, cancel, the API, webhooks and `latentq status` must all
still be right, from the record the worker wrote to the store (local directory, and S3 on moto's
server) before it marked the job finished.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
import torch
from helpers import decode_png, wait_until
from webhook_receiver import SECRET, Receiver

from latentq import Client
from latentq.core.request import JobInfo, JobStatus, ResultObject
from latentq.errors import JobConflict, JobNotFound
from latentq.state.records import RecordReader, read_record, record_key, write_record
from latentq.store import LocalStore


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.mark.timeout(240)
def test_a_finished_job_answers_from_the_store_once_redis_dropped_it(store_env, procs, receiver, redis_conn,
                                                                     monkeypatch):  # fmt: skip
    for name, value in {"LATENTQ_RECORD_TTL": "0", "LATENTQ_WEBHOOK_SECRET": SECRET,
                        "LATENTQ_WEBHOOK_ALLOW": "127.0.0.1"}.items():  # the receiver is local  # fmt: skip
        procs.env[name] = value
        monkeypatch.setenv(name, value)
    procs.worker("taef2")
    api = procs.api()
    client = Client()
    job = client.submit(torch.randn(32, 8, 8), model="taef2", callback_url=f"{receiver.url}/hook",
                        metadata={"prompt": "a cat"})  # fmt: skip
    other = client.submit(torch.randn(32, 8, 8), model="taef2", output_format="jpeg")
    batch = client.submit_many(torch.randn(3, 32, 8, 8), model="taef2")
    (result,) = job.wait(60)
    for each in [other, *batch]:
        each.wait(60)

    # Redis holds nothing of the finished jobs: no job hash, result stream, latent or execution.
    assert [k for each in [job, other, *batch] for k in redis_conn.scan_iter(f"*{each.id}*")] == []

    info = client.job_info(job.id)
    assert info.status is JobStatus.FINISHED and info.metadata == {"prompt": "a cat"}
    assert [r.key for r in info.results] == [result.key]
    # The same object's URL; signed afresh on each read (an S3 presigned URL carries the second it was made).
    assert info.results[0].url.split("?")[0] == result.url.split("?")[0]
    assert info.ended_at and info.started_at and info.enqueued_at and info.worker and info.batch_size
    assert job.wait(5)[0].key == result.key  # a second wait answers from the store at once
    png = decode_png(job.read())
    assert png.shape == (result.height, result.width, 3) == (64, 64, 3)
    with pytest.raises(JobConflict, match="finished"):
        client.cancel(job.id)
    with pytest.raises(JobNotFound):
        client.job_info("0" * 32)

    status = httpx.get(f"{api}/v1/jobs/{job.id}").json()
    assert status["status"] == "finished" and status["results"][0]["key"] == result.key
    served = httpx.get(status["results"][0]["url"], follow_redirects=True)
    assert served.status_code == 200 and served.content == job.read()
    assert httpx.get(f"{api}/v1/jobs/{other.id}").json()["results"][0]["content_type"] == "image/jpeg"
    assert httpx.delete(f"{api}/v1/jobs/{job.id}").status_code == 409
    batch_status = httpx.get(f"{api}/v1/batches/{batch[0].batch_id}").json()
    assert batch_status["done"] and batch_status["counts"]["finished"] == 3
    assert sorted(j["id"] for j in batch_status["jobs"]) == sorted(each.id for each in batch)
    assert all(j["results"][0]["url"].startswith(("http://", "https://")) for j in batch_status["jobs"])
    assert httpx.get(f"{api}/v1/jobs/{'0' * 32}").status_code == 404
    # The record is not a result object: never served by key, even to someone who knows the job id.
    hidden = httpx.get(f"{api}/v1/results/{record_key(job.id)}")
    assert hidden.status_code == 404 and hidden.json()["error"]["field"] == "key"

    # The webhook carries the finished status although Redis no longer has the job.
    wait_until(lambda: receiver.deliveries, 30)
    (delivery,) = receiver.deliveries
    body = delivery.data  # the Standard Webhooks payload's data: the job's status
    assert delivery.verifies() and body["status"] == "finished" and body["results"][0]["key"] == result.key

    # `latentq status` counts finished jobs from the metrics, not from the (dropped) records.
    table = subprocess.run([sys.executable, "-m", "latentq", "status"], env=procs.env, capture_output=True,
                           text=True, timeout=60, check=True).stdout  # fmt: skip
    row = next(line.split() for line in table.splitlines() if line.startswith("taef2 "))
    queued, started, finished, failed, workers, per_minute = (int(v) for v in row[1:])
    assert (queued, started, finished, failed, workers) == (0, 0, 5, 0, 1)
    # jobs/min estimates the last 60 s (this minute plus the unexpired share of the last one): a minute
    # boundary between the decodes and this call lowers it, so only its bound is certain.
    assert per_minute <= 5
    client.close()


@pytest.mark.timeout(60)
def test_redis_keeps_the_record_for_the_record_ttl(procs, redis_conn, monkeypatch):
    monkeypatch.setenv("LATENTQ_RECORD_TTL", "30")
    procs.worker("taef2")
    client = Client()
    job = client.submit(torch.randn(32, 4, 4), model="taef2")
    job.wait(30)
    assert 0 < redis_conn.ttl(f"rq:job:{job.id}") <= 30
    assert client.job_info(job.id).status is JobStatus.FINISHED
    # A record TTL longer than the results' own is capped at it.
    monkeypatch.setenv("LATENTQ_RESULT_TTL", "20")
    monkeypatch.setenv("LATENTQ_RECORD_TTL", "600")
    capped = Client().submit(torch.randn(32, 4, 4), model="taef2")
    capped.wait(30)
    assert 0 < redis_conn.ttl(f"rq:job:{capped.id}") <= 20


def test_record_round_trip_and_rewrite(tmp_path):
    store = LocalStore(tmp_path)
    info = JobInfo(id="abc123", model="taef2", status=JobStatus.FINISHED, batch_size=2, metadata={"k": 1},
                   results=[ResultObject(key="abc123/0-tokentoken.png", content_type="image/png", width=8,
                                         height=8, bytes=10, url="file:///old")],
                   preview=ResultObject(key="abc123/p-tokentoken.jpg", content_type="image/jpeg", width=8,
                                        height=8, bytes=5), queue_position=3, workers=0)  # fmt: skip
    write_record(store, info)
    stored = json.loads((tmp_path / record_key("abc123")).read_text())["job"]
    assert stored["results"][0]["url"] is None and "queue_position" not in stored  # URLs are made when read
    back = read_record(store, "abc123", lambda key: f"https://x/{key}")
    assert back.results[0].url == "https://x/abc123/0-tokentoken.png"
    assert back.preview.url == "https://x/abc123/p-tokentoken.jpg"
    assert back.batch_size == 2 and back.metadata == {"k": 1} and back.queue_position is None
    # A retried job rewrites its record.
    write_record(store, JobInfo(id="abc123", model="taef2", status=JobStatus.FINISHED, batch_size=1))
    assert read_record(store, "abc123", str).batch_size == 1
    assert read_record(store, "unknown", str) is None


def test_record_reader_caches_ended_jobs_only(tmp_path):
    store = LocalStore(tmp_path)
    reader = RecordReader(store, size=2)
    assert reader.read("later", str) is None  # not written yet: a miss is not cached
    write_record(store, JobInfo(id="later", model="taef2", status=JobStatus.FINISHED, batch_size=4))
    assert reader.read("later", str).batch_size == 4
    store.delete(record_key("later"))
    assert reader.read("later", str).batch_size == 4  # an ended job's record no longer changes: no re-read
    for job_id in ("a1", "b2"):
        write_record(store, JobInfo(id=job_id, model="taef2", status=JobStatus.FINISHED))
        reader.read(job_id, str)
    assert reader.read("later", str) is None  # evicted (size 2), then read again: gone from the store


def test_result_and_worker_stats_records_round_trip():
    """The records that cross processes are dataclasses: the same fields written as read."""
    from latentq.core.request import JobResult
    from latentq.state.worker_stats import Counter, WorkerStats

    result = JobResult([{"key": "k", "content_type": "image/png", "width": 2, "height": 2, "bytes": 9}], batch_size=3,
                       decode_ms=1.5, tiled=False, encode_ms=0.5, store_ms=2.0)  # fmt: skip
    assert JobResult.from_dict(result.to_dict()) == result
    assert "decode_ms" not in JobResult([], batch_size=1).to_dict()  # an encode job's record has no decode time
    assert result.timings_ms() == {"decode": 1.5, "encode": 0.5, "store": 2.0}
    written = {**WorkerStats.identity(["taef2", "sd15"], 8, WorkerStats.device_fields("cuda:0", (3, 10))),
               Counter.DECODE_CALLS.value: 4, Counter.ENCODE_WAIT_MS.value: "12"}
    raw = {key.encode(): str(value).encode() for key, value in written.items()}
    stats = WorkerStats.from_hash(raw)
    assert stats.models == ("taef2", "sd15") and stats.max_batch == 8 and stats.device == "cuda:0"
    assert stats.gpu_memory_used == 7 and stats.gpu_memory_total == 10
    assert stats.decode_calls == 4 and stats.encode_wait_ms == 12 and stats.model_loads == 0
    assert {field.value for field in Counter} <= {f.name for f in __import__("dataclasses").fields(WorkerStats)}


def test_a_failed_job_carries_why_it_failed_and_the_api_status_follows_it(env, redis_conn, tmp_path, monkeypatch):
    """The failure kind is recorded with the failure (not read back from the reason's text)."""
    import json as json_module

    import torch

    from latentq import Client, JobFailed
    from latentq.config import Settings
    from latentq.core.request import FailureKind, JobStatus
    from latentq.models.loader import load_model
    from latentq.models.registry import load_registry
    from latentq.state import keys
    from latentq.store import LocalStore
    from latentq.worker import DecodeWorker

    client = Client(settings=Settings.from_env(max_retries=0))
    gone = client.submit(torch.randn(32, 4, 4), model="taef2")
    redis_conn.delete(keys.latent_key(gone.id))  # its input is gone: refused by the worker, the input's fault
    canceled = client.submit(torch.randn(32, 4, 4), model="taef2")
    client.cancel(canceled.id)
    model = load_model(load_registry(Settings.from_env().models_file).get("taef2"))
    DecodeWorker({"taef2": model}, redis_conn, LocalStore(tmp_path / "a"), name="a").work(burst=True)
    monkeypatch.setenv("LATENTQ_FAULTS", json_module.dumps({"store_failures": 1000}))  # every store write fails
    broken_store = client.submit(torch.randn(32, 4, 4), model="taef2")
    DecodeWorker({"taef2": model}, redis_conn, LocalStore(tmp_path / "b"), name="b", store_attempts=1).work(burst=True)

    expected = {gone: (JobStatus.FAILED, FailureKind.INPUT, 422), canceled: (JobStatus.CANCELED, FailureKind.ENDED, 409),
                broken_store: (JobStatus.FAILED, FailureKind.WORKER, 502)}  # fmt: skip
    for job, (status, failure, http_status) in expected.items():
        info = job.info()
        assert (info.status, info.failure) == (status, failure), job.id
        assert info.to_dict()["failure"] == failure.value
        if status is JobStatus.FAILED:
            with pytest.raises(JobFailed) as failed:
                job.wait(5)
            assert failed.value.failure == failure.value and failed.value.status_code == http_status
    assert JobFailed("j", "InvalidLatent: a record from before failures were kept").status_code == 422  # the fallback
