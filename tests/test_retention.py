"""Retention: `latentq cleanup` expires results after the result TTL (local files, S3 lifecycle rules or sweeps)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import MOTO_CREDENTIALS, S3RVER_CREDENTIALS, use_s3_store

from latentq.cli import main
from latentq.store import LocalStore
from latentq.store.base import make_key

HOUR = 3600


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latentq", *args], env=env, capture_output=True, text=True, timeout=120)


def sweep_and_check(store, old: list[str], new: list[str], older_than: float, sweep) -> None:
    """Run ``sweep`` and check it by the objects' own timestamps, not by a margin on the clock.

    An object older than ``older_than`` when the sweep began must be gone; one younger than that when
    it ended must be there (on a stalled machine "new" may have aged past the bound: not asserted).
    """
    modified = {key: store.client.head_object(Bucket=store.bucket, Key=store.object_key(key))["LastModified"].timestamp()
                for key in old + new}  # fmt: skip
    began = time.time()
    sweep()
    ended = time.time()
    checked = 0
    for key in old:
        if began - modified[key] > older_than:
            assert not store.exists(key), key
            checked += 1
    for key in new:
        if ended - modified[key] < older_than:
            assert store.exists(key), key
            checked += 1
    assert checked, "no object could be judged: the machine stalled for the whole bound"


def backdate(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.mark.timeout(120)
@pytest.mark.integration  # runs the CLI / a fresh interpreter
def test_cleanup_removes_local_objects_older_than_the_ttl(tmp_path):
    store = LocalStore(tmp_path / "results")
    old = [make_key("old-job", "png", i) for i in range(2)]
    mixed_old, mixed_new = make_key("mixed-job", "png", 0), make_key("mixed-job", "png", 1)
    for key in [*old, mixed_old, mixed_new]:
        store.put(key, b"png bytes", "image/png")
    for key in [*old, mixed_old]:
        backdate(store.path(key), 2 * HOUR)
    (store.path(old[0]).parent / ".tmp-interrupted").write_bytes(b"half")  # a write cut short long ago
    backdate(store.path(old[0]).parent / ".tmp-interrupted", 2 * HOUR)
    backdate(store.path(old[0]).parent, 2 * HOUR)  # its job directory saw no write since

    env = {**os.environ, "LATENTQ_RESULT_TTL": str(HOUR)}
    env.pop("LATENTQ_STORE", None)
    done = cli(env, "cleanup", "--store", str(store.root))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"deleted 3 result object(s) older than 3600 s from {store.root}"
    assert not store.path(old[0]).parent.exists()  # emptied job directories go too (temp files included)
    assert [store.exists(key) for key in (mixed_old, mixed_new)] == [False, True]
    assert cli(env, "cleanup", "--store", str(store.root)).stdout.startswith("deleted 0 ")

    env["LATENTQ_RESULT_TTL"] = str(3 * HOUR)  # a longer TTL keeps a 2-hour-old object
    backdate(store.path(mixed_new), 2 * HOUR)
    assert cli(env, "cleanup", "--store", str(store.root)).stdout.startswith("deleted 0 ")
    assert cli(env, "cleanup", "--store", str(store.root), "--older-than", str(HOUR)).stdout.startswith("deleted 1 ")
    assert not store.exists(mixed_new)


@pytest.mark.timeout(30)
def test_local_expire_of_a_missing_directory_is_zero(tmp_path):
    assert LocalStore(tmp_path / "never-written").expire(0) == 0


@pytest.mark.timeout(120)
def test_cleanup_installs_the_lifecycle_rule_on_s3(env, moto_endpoint, monkeypatch):
    s3 = use_s3_store(env, monkeypatch, moto_endpoint, MOTO_CREDENTIALS, "results/ttl")
    from latentq.store.s3 import S3Store

    store = S3Store.from_url(s3["LATENTQ_STORE"])
    done = cli({**env, "LATENTQ_RESULT_TTL": str(3 * 86400 + 1)}, "cleanup")
    assert done.returncode == 0, done.stderr
    assert f"objects under s3://{s3['bucket']}/results/ttl expire after 4 day(s)" in done.stdout  # rounded up
    rules = store.client.get_bucket_lifecycle_configuration(Bucket=s3["bucket"])["Rules"]
    assert [(r["ID"], r["Filter"]["Prefix"], r["Expiration"]["Days"], r["Status"]) for r in rules] == [
        ("latentq-expiry:results/ttl", "results/ttl/", 4, "Enabled")
    ]
    done = cli({**env, "LATENTQ_RESULT_TTL": "600"}, "cleanup")  # a sub-day TTL: one day, replacing the rule
    assert "expire after 1 day(s)" in done.stdout
    rules = store.client.get_bucket_lifecycle_configuration(Bucket=s3["bucket"])["Rules"]
    assert [r["Expiration"]["Days"] for r in rules] == [1]

    # --sweep also deletes what is already older than the TTL, now.
    old = make_key("old-job", "png")
    store.put(old, b"old", "image/png")
    time.sleep(3)  # S3's LastModified has whole seconds
    new = make_key("new-job", "png")
    store.put(new, b"new", "image/png")
    sweep_and_check(store, [old], [new], 2, lambda: main(["cleanup", "--older-than", "2", "--sweep"]))


@pytest.mark.timeout(300)
def test_cleanup_without_lifecycle_support_deletes_old_objects(env, s3rver_endpoint, monkeypatch, capsys):
    s3 = use_s3_store(env, monkeypatch, s3rver_endpoint, S3RVER_CREDENTIALS, "results")
    from latentq.store.s3 import S3Store

    store = S3Store.from_url(s3["LATENTQ_STORE"])
    elsewhere = S3Store(s3["bucket"], "not-ours", endpoint_url=s3rver_endpoint, **S3RVER_CREDENTIALS)
    old = [make_key("old-job", "png", i) for i in range(3)]
    for key in old:
        store.put(key, b"old", "image/png")
    elsewhere.put(old[0], b"other prefix", "image/png")
    time.sleep(3)  # S3 LastModified has whole seconds
    new = make_key("new-job", "png")
    store.put(new, b"new", "image/png")

    sweep_and_check(store, old, [new], 2, lambda: main(["cleanup", "--older-than", "2"]))
    out = capsys.readouterr().out
    assert "does not support lifecycle rules" in out
    assert f"older than 2 s from s3://{s3['bucket']}/results" in out
    assert elsewhere.exists(old[0])  # outside the prefix: untouched
