"""The deployment describes itself (latentq.state.deployment): signed result URLs that work anywhere for a
while, `latentq up` found without flags, and cleanup that the job records agree with."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import torch
from helpers import decode_png, wait_until
from safetensors.torch import save_file
from webhook_receiver import Receiver

from latentq import Client
from latentq.core.request import JobInfo, JobStatus
from latentq.errors import JobNotFound
from latentq.local.redis_server import free_port
from latentq.producer.http import HttpClient
from latentq.state.deployment import sign_result, signature_problem
from latentq.state.records import RecordReader, record_key, write_record
from latentq.store import LocalStore

pytestmark = pytest.mark.integration  # starts processes


KEY = "key-of-tenant-a"


def bare_env(**extra: str) -> dict[str, str]:
    """An environment with no latentq setting at all (what another service or a user's shell has)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LATENTQ_", "XDG_"))}
    return {**env, **extra}


def python(code: str, *args: str, env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


FETCH = "import httpx, sys; r = httpx.get(sys.argv[1]); sys.stdout.write(f'{r.status_code} {len(r.content)}')"


def tamper(url: str) -> str:
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    changed = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    return url.replace(f"sig={sig}", f"sig={changed}")


@pytest.mark.timeout(30)
def test_signatures_name_key_and_expiry():
    secret = b"s" * 32
    url = sign_result("http://h:1/", "job1/0-abcdefgh.png", secret, ttl=3600, now=1000.0)
    query = parse_qs(urlsplit(url).query)
    expires, sig = query["expires"][0], query["sig"][0]
    assert url.startswith("http://h:1/v1/results/job1/0-abcdefgh.png?") and 4600 <= int(expires) <= 4600 + 360
    assert signature_problem("job1/0-abcdefgh.png", expires, sig, secret, now=1000.0) is None
    # A URL made a moment later is the same URL (browsers and CDNs cache it): the expiry is rounded up.
    assert sign_result("http://h:1", "job1/0-abcdefgh.png", secret, ttl=3600, now=1001.0) == url
    refused = {
        "another key": signature_problem("job1/0-abcdefgh.jpg", expires, sig, secret, now=1000.0),
        "another secret": signature_problem("job1/0-abcdefgh.png", expires, sig, b"t" * 32, now=1000.0),
        "a later expiry": signature_problem("job1/0-abcdefgh.png", str(int(expires) + 1), sig, secret, now=1000.0),
        "expired": signature_problem("job1/0-abcdefgh.png", expires, sig, secret, now=int(expires) + 1),
        "no sig": signature_problem("job1/0-abcdefgh.png", expires, None, secret, now=1000.0),
        "bad expiry": signature_problem("job1/0-abcdefgh.png", "soon", sig, secret, now=1000.0),
    }
    assert {name: problem[0] for name, problem in refused.items() if problem} == {
        "another key": "sig", "another secret": "sig", "a later expiry": "sig", "expired": "expires",
        "no sig": "sig", "bad expiry": "expires",
    }  # fmt: skip


@pytest.mark.timeout(240)
def test_signed_urls_work_without_a_key_from_anywhere_until_they_expire(procs, env, tmp_path, monkeypatch):
    procs.env["LATENTQ_API_KEYS"] = KEY
    monkeypatch.setenv("LATENTQ_API_KEYS", KEY)
    procs.worker("taef2")
    api = procs.api()
    with HttpClient(api, api_key=KEY) as http:
        submitted = http.submit(torch.randn(32, 8, 8), model="taef2")
        (result,) = submitted.wait(60)
    client = Client()  # straight through Redis: the same signed URL, through the API's public URL
    job = client.job(submitted.id)
    assert client.job_info(job.id).results[0].url.startswith(f"{api}/v1/results/{result.key}?expires=")
    png = job.read()
    assert decode_png(png).shape == (64, 64, 3)

    status = httpx.get(f"{api}/v1/jobs/{job.id}", headers={"authorization": f"Bearer {KEY}"}).json()
    url = status["results"][0]["url"]
    assert "secret" not in json.dumps(status)
    # Another process, in another directory, with no latentq setting and no key: a plain GET.
    fetched = python(FETCH, url, env=bare_env(), cwd=tmp_path / "elsewhere")
    assert fetched.stdout == f"200 {len(png)}", fetched.stderr
    assert httpx.get(url).content == png

    altered = httpx.get(tamper(url))
    assert altered.status_code == 403 and altered.json()["error"]["field"] == "sig", altered.text
    assert httpx.get(f"{api}/v1/results/{result.key}").status_code == 401  # unsigned: the key is needed
    keyed = httpx.get(f"{api}/v1/results/{result.key}", headers={"authorization": f"Bearer {KEY}"})
    assert keyed.status_code == 200 and keyed.content == png

    # A URL signed with a one-second TTL (LATENTQ_RESULT_URL_TTL, here a Client's: the same deployment's
    # secret) is refused by the API once its expiry has passed.
    monkeypatch.setenv("LATENTQ_RESULT_URL_TTL", "1")
    short = Client()
    brief = short.job_info(job.id).results[0].url
    wait_until(lambda: time.time() > _expiry(brief) + 0.001, 30)
    expired = python(FETCH, brief, env=bare_env(), cwd=tmp_path / "elsewhere")
    assert expired.stdout.startswith("403 "), expired.stdout + expired.stderr
    body = httpx.get(brief).json()
    assert body["error"]["type"] == "Forbidden" and body["error"]["field"] == "expires"
    fresh = short.job_info(job.id).results[0].url  # every read signs a fresh URL
    assert _expiry(fresh) > _expiry(brief)
    assert httpx.get(url).content == png  # the API's own, of an hour, still works
    short.close()
    client.close()


def _expiry(url: str) -> int:
    return int(parse_qs(urlsplit(url).query)["expires"][0])


@pytest.mark.timeout(60)
def test_a_deployment_without_an_api_gives_no_url_and_reads_its_directory(procs, env, tmp_path):
    procs.worker("taef2")
    client = Client()
    (result,) = client.submit(torch.randn(32, 4, 4), model="taef2").wait(30)
    assert result.url is None  # no API to serve it, and a file:// path would mean nothing elsewhere
    job = client.submit(torch.randn(32, 4, 4), model="taef2")
    job.wait(30)
    assert decode_png(job.read()).shape == (32, 32, 3)  # the directory is on this machine: read directly
    code = ("import sys; from latentq import Client; from latentq.errors import StoreError\n"
            "try:\n    Client().job(sys.argv[1]).read()\nexcept StoreError as exc:\n    print(exc)")  # fmt: skip
    # A Client whose store setting names another directory cannot read it, and says why.
    elsewhere = python(code, job.id, env={**env, "LATENTQ_STORE": str(tmp_path / "not-here")}, cwd=tmp_path / "x")
    assert "no API to fetch it through" in elsewhere.stdout, elsewhere.stdout + elsewhere.stderr
    client.close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.mark.timeout(300)
def test_latentq_up_is_found_without_flags(models_file, tmp_path, receiver):
    """Under a real `latentq up` (API keys on), other commands and Client() on the machine need no settings."""
    run_dir, data_dir = tmp_path / "run", tmp_path / "data"
    # No Redis URL, no store: only the models file and the webhook receiver's address (a loopback one).
    machine = bare_env(XDG_RUNTIME_DIR=str(run_dir), XDG_DATA_HOME=str(data_dir), LATENTQ_MODELS=str(models_file),
                       LATENTQ_WEBHOOK_ALLOW="127.0.0.1", OMP_NUM_THREADS="1")  # fmt: skip
    port = free_port()
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "latentq", "up", "--workers", "1", "--port", str(port)],
                              env={**machine, "LATENTQ_API_KEYS": KEY}, cwd=tmp_path, stdout=out,
                              stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    api = f"http://127.0.0.1:{port}"
    state_file = run_dir / "latentq" / "up.json"
    try:
        wait_until(lambda: "latentq is up" in log.read_text() or up.poll() is not None, 180)
        assert up.poll() is None, log.read_text()
        state = json.loads(state_file.read_text())
        assert state["pid"] == up.pid and state["api_url"] == api
        store = data_dir / "latentq" / "results"
        assert state["store"] == str(store)  # absolute, the same for every process

        # Client() from another directory, with no LATENTQ_* settings at all: http URLs and read().
        code = ("import sys, torch; from latentq import Client\n"
                "client = Client(); job = client.submit(torch.randn(32, 4, 4), model='taef2', callback_url=sys.argv[1])\n"
                "(result,) = job.wait(60); data = job.read()\n"
                "print(job.id, result.url, len(data), data[1:4].decode())")  # fmt: skip
        done = python(code, f"{receiver.url}/hook", env=machine, cwd=tmp_path / "somewhere")
        assert done.returncode == 0, done.stderr
        job_id, url, size, magic = done.stdout.split()
        assert url.startswith(f"{api}/v1/results/{job_id}/") and magic == "PNG"
        assert sorted(p.suffix for p in (store / job_id).iterdir()) == [".json", ".png"]
        # The workers started before the API: their webhooks carry its URLs all the same (from Redis).
        hook = wait_until(lambda: next((d for d in receiver.deliveries if d.data["id"] == job_id), None), 60)
        assert hook.data["results"][0]["url"].startswith(f"{api}/v1/results/{job_id}/")
        assert httpx.get(url).content[1:4] == b"PNG" and len(httpx.get(url).content) == int(size)  # no key
        # A store setting naming a directory that is not this deployment's: read() goes through the API.
        through_api = python(code, f"{receiver.url}/other", env={**machine, "LATENTQ_STORE": str(tmp_path / "empty")},
                             cwd=tmp_path / "else")  # fmt: skip
        assert through_api.returncode == 0 and through_api.stdout.split()[3] == "PNG", through_api.stderr

        status = subprocess.run([sys.executable, "-m", "latentq", "status"], env=machine, cwd=tmp_path / "somewhere",
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert f"(latentq up, pid {up.pid}), API {api}, results {store}" in status.stdout, status.stdout
        assert [line for line in status.stdout.splitlines() if line.startswith("worker ")], status.stdout
        row = next(line.split() for line in status.stdout.splitlines() if line.startswith("taef2 "))
        assert row[3] == "2", status.stdout  # the two jobs just decoded

        latent = tmp_path / "one.safetensors"
        save_file({"latent": torch.randn(32, 4, 4)}, str(latent))
        submit = [sys.executable, "-m", "latentq", "submit", str(latent), "--model", "taef2", "--api", api]
        refused = subprocess.run(submit, env=machine, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "API key" in refused.stderr, refused.stderr
        out = tmp_path / "out"
        keyed = subprocess.run([*submit, "--wait", "--out", str(out)], env={**machine, "LATENTQ_API_KEY": KEY},
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        assert keyed.returncode == 0, keyed.stderr
        assert [p.name for p in out.iterdir()] == ["one-latent-0.png"]
        assert decode_png((out / "one-latent-0.png").read_bytes()).shape == (32, 32, 3)
        up.send_signal(signal.SIGTERM)
        assert up.wait(90) == 0, log.read_text()
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    assert not state_file.exists()  # removed on exit: nothing points at a deployment that is gone


@pytest.mark.timeout(240)
def test_cleanup_then_reading_a_job_answers_gone(procs, env, tmp_path, monkeypatch):
    procs.worker("taef2")
    api = procs.api()
    monkeypatch.setenv("LATENTQ_RECORD_TTL", "0")  # Redis drops this one at once: its record answers (and is cached)
    dropped = Client()
    stored_job = dropped.submit(torch.randn(32, 4, 4), model="taef2")
    stored_job.wait(30)
    monkeypatch.delenv("LATENTQ_RECORD_TTL")
    kept = Client()
    live_job = kept.submit(torch.randn(32, 4, 4), model="taef2")  # Redis keeps this one a minute
    live_job.wait(30)
    urls = {}
    for job in (stored_job, live_job):
        for _ in range(2):  # the second read answers from the API's cache of ended jobs
            body = httpx.get(f"{api}/v1/jobs/{job.id}").json()
            assert body["status"] == "finished", body
        urls[job.id] = body["results"][0]["url"]
        assert httpx.get(urls[job.id]).status_code == 200
    assert dropped.job_info(stored_job.id).status is JobStatus.FINISHED  # cached in this Client too

    done = subprocess.run([sys.executable, "-m", "latentq", "cleanup", "--older-than", "0"], env=procs.env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("deleted 4 "), done.stdout + done.stderr

    for job in (stored_job, live_job):
        gone = httpx.get(f"{api}/v1/jobs/{job.id}")
        assert gone.status_code == 404 and gone.json()["error"]["type"] == "JobNotFound", gone.text
        assert httpx.get(urls[job.id]).status_code == 404
        with pytest.raises(JobNotFound):
            dropped.job_info(job.id)
    dropped.close()
    kept.close()


@pytest.mark.timeout(30)
def test_record_reader_drops_its_cache_at_a_cleanup_and_after_the_result_ttl(tmp_path):
    store = LocalStore(tmp_path)
    cleanups = [0]
    reader = RecordReader(store, cleanups=lambda: cleanups[0])
    write_record(store, JobInfo(id="a1", model="taef2", status=JobStatus.FINISHED, ended_at="2020-01-01T00:00:00+00:00"))
    assert reader.read("a1", str) is not None
    store.delete(record_key("a1"))
    assert reader.read("a1", str) is not None  # cached: no store read
    cleanups[0] += 1
    assert reader.read("a1", str) is None  # a cleanup ran: re-read, and gone

    aged = RecordReader(store, max_age=3600)
    write_record(store, JobInfo(id="b2", model="taef2", status=JobStatus.FINISHED, ended_at="2020-01-01T00:00:00+00:00"))
    assert aged.read("b2", str) is not None
    store.delete(record_key("b2"))  # an S3 lifecycle rule deletes it, unannounced
    assert aged.read("b2", str) is None  # older than the result TTL: never answered from the cache
