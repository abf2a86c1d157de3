"""S3Store against real S3 wire servers (moto and s3rver, started by fixtures in conftest.py).

moto speaks S3 well enough for round trips, prefixes and lifecycle rules, but it checks neither
presigned signatures nor their expiry. For those, s3rver (Node, from npm, installed once into
~/.cache/latentq-test/s3rver) is used: the @20minutes fork, because s3rver 3.x accepts any SigV4
signature ("Signature version 4 calculation is unimplemented" in its authentication middleware).
"""

from __future__ import annotations

import concurrent.futures
import uuid

import httpx
import pytest

boto3 = pytest.importorskip("boto3")

# The servers' fixtures (moto_endpoint, s3rver_endpoint) live in conftest.py, shared with the end-to-end tests.
from conftest import MOTO_CREDENTIALS, S3RVER_CREDENTIALS
from helpers import fetch_while_fresh, wait_until_expired

from latentq.errors import ConfigError, StoreError
from latentq.local.redis_server import free_port
from latentq.store.base import make_key
from latentq.store.s3 import S3Store

pytestmark = pytest.mark.usefixtures("isolated_aws_env")


def new_bucket() -> str:
    return f"latentq-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def moto_store(moto_endpoint) -> S3Store:
    store = S3Store(new_bucket(), "results/v1", endpoint_url=moto_endpoint, **MOTO_CREDENTIALS)
    store.ensure_bucket()
    return store


@pytest.fixture
def s3rver_store(s3rver_endpoint) -> S3Store:
    store = S3Store(new_bucket(), "results", endpoint_url=s3rver_endpoint, **S3RVER_CREDENTIALS)
    store.ensure_bucket()
    return store


def raw_client(endpoint: str, credentials: dict[str, str]):
    return boto3.session.Session(
        aws_access_key_id=credentials["access_key_id"],
        aws_secret_access_key=credentials["secret_access_key"],
        region_name="us-east-1",
    ).client("s3", endpoint_url=endpoint)


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


# ---------------------------------------------------------------- moto


@pytest.mark.timeout(60)
def test_put_get_round_trip_sets_content_type_and_cache_control(moto_store, moto_endpoint):
    key = make_key("job-1", "png")
    moto_store.put(key, PNG, "image/png")
    assert moto_store.get(key) == PNG
    assert moto_store.exists(key)
    head = raw_client(moto_endpoint, MOTO_CREDENTIALS).head_object(Bucket=moto_store.bucket, Key=f"results/v1/{key}")
    assert head["ContentType"] == "image/png"
    assert head["CacheControl"] == "public, max-age=31536000, immutable"
    assert head["ContentLength"] == len(PNG)
    moto_store.delete(key)
    assert not moto_store.exists(key)
    moto_store.delete(key)  # deleting twice is fine


@pytest.mark.timeout(60)
def test_object_lands_under_the_prefix(moto_endpoint):
    store = S3Store(new_bucket(), "/deep/pre/fix/", endpoint_url=moto_endpoint, cache_control="no-store",
                    **MOTO_CREDENTIALS)
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    key = make_key("job-2", "jpg")
    store.put(key, b"jpeg bytes", "image/jpeg")
    listing = raw_client(moto_endpoint, MOTO_CREDENTIALS).list_objects_v2(Bucket=store.bucket)
    assert [item["Key"] for item in listing["Contents"]] == [f"deep/pre/fix/{key}"]
    head = store.client.head_object(Bucket=store.bucket, Key=f"deep/pre/fix/{key}")
    assert head["CacheControl"] == "no-store"

    bare = S3Store(store.bucket, endpoint_url=moto_endpoint, **MOTO_CREDENTIALS)
    bare.put(key, b"top level", "text/plain")
    assert bare.get(key) == b"top level" and store.get(key) == b"jpeg bytes"


@pytest.mark.timeout(60)
def test_presigned_url_downloads_the_object(moto_store, moto_endpoint):
    key = make_key("job-3", "png")
    moto_store.put(key, PNG, "image/png")
    url = moto_store.url(key)
    assert url.startswith(f"{moto_endpoint}/{moto_store.bucket}/results/v1/{key}?")  # path style
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url and "X-Amz-Expires=3600" in url
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"


@pytest.mark.timeout(60)
def test_public_base_url_form(moto_endpoint):
    store = S3Store(new_bucket(), "r", endpoint_url=moto_endpoint, public_base_url="https://cdn.example.com/x/",
                    **MOTO_CREDENTIALS)
    key = make_key("job-4", "webp")
    assert store.url(key) == f"https://cdn.example.com/x/r/{key}"
    assert not store.served_by_api


@pytest.mark.timeout(60)
def test_missing_objects_and_buckets_raise_store_error(moto_store, moto_endpoint):
    key = make_key("job-5", "png")
    with pytest.raises(StoreError, match="no result object"):
        moto_store.get(key)
    assert not moto_store.exists(key)
    gone = S3Store(new_bucket(), endpoint_url=moto_endpoint, **MOTO_CREDENTIALS)  # bucket never created
    with pytest.raises(StoreError):
        gone.put(key, b"x", "text/plain")
    with pytest.raises(StoreError):
        gone.get(key)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key", ["../x", "job/../../etc/passwd", "", "a/b/c", "job/short", "job/abcdefghij.PNG"])
def test_invalid_keys_are_refused(moto_store, key):
    for call in (lambda: moto_store.put(key, b"x", "text/plain"), lambda: moto_store.get(key),
                 lambda: moto_store.exists(key), lambda: moto_store.delete(key), lambda: moto_store.url(key)):
        with pytest.raises(StoreError, match="invalid result key"):
            call()


@pytest.mark.timeout(60)
def test_from_url_reads_the_environment(monkeypatch, moto_endpoint):
    monkeypatch.setenv("LATENTQ_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # LATENTQ_S3_ENDPOINT_URL wins
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("LATENTQ_S3_PRESIGN_EXPIRY", "120")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # credentials come from boto3's usual chain
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    bucket = new_bucket()
    store = S3Store.from_url(f"s3://{bucket}/some/prefix")
    assert (store.bucket, store.prefix, store.presign_expiry) == (bucket, "some/prefix", 120)
    assert store.client.meta.region_name == "eu-west-3"
    assert store.client.meta.endpoint_url == moto_endpoint
    assert store.public_base_url is None
    store.ensure_bucket()  # outside us-east-1: needs a LocationConstraint
    key = make_key("job-6", "png")
    store.put(key, b"via env", "image/png")
    assert store.get(key) == b"via env"
    assert "X-Amz-Expires=120" in store.url(key) and "eu-west-3" in store.url(key)

    monkeypatch.delenv("LATENTQ_S3_ENDPOINT_URL")
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    monkeypatch.setenv("LATENTQ_S3_PUBLIC_URL", "https://cdn.example.com")
    fallback = S3Store.from_url("s3://other", presign_expiry=30)
    assert (fallback.bucket, fallback.prefix, fallback.presign_expiry) == ("other", "", 30)
    assert fallback.client.meta.endpoint_url == "http://127.0.0.1:1"
    assert fallback.client.meta.region_name == "us-west-2"
    assert fallback.url(key) == f"https://cdn.example.com/{key}"

    for bad in ("https://bucket/x", "s3:///prefix", "s3://bucket/x?versionId=1", "bucket/x"):
        with pytest.raises(ConfigError):
            S3Store.from_url(bad)
    monkeypatch.setenv("LATENTQ_S3_PRESIGN_EXPIRY", "soon")
    with pytest.raises(ConfigError, match="LATENTQ_S3_PRESIGN_EXPIRY"):
        S3Store.from_url("s3://bucket")
    with pytest.raises(ConfigError):
        S3Store("bucket", presign_expiry=8 * 24 * 3600)
    with pytest.raises(ConfigError):
        S3Store("bucket", "a/../b")


@pytest.mark.timeout(60)
def test_set_expiry_puts_a_lifecycle_rule(moto_store, moto_endpoint):
    client = raw_client(moto_endpoint, MOTO_CREDENTIALS)
    other = {"ID": "someone-else", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 90}}
    client.put_bucket_lifecycle_configuration(Bucket=moto_store.bucket, LifecycleConfiguration={"Rules": [other]})

    assert moto_store.set_expiry(7) is True
    assert moto_store.set_expiry(3) is True  # replaces our rule, keeps the other one
    rules = {rule["ID"]: rule for rule in client.get_bucket_lifecycle_configuration(Bucket=moto_store.bucket)["Rules"]}
    assert set(rules) == {"someone-else", "latentq-expiry:results/v1"}
    ours = rules["latentq-expiry:results/v1"]
    assert ours["Expiration"]["Days"] == 3 and ours["Status"] == "Enabled"
    assert ours["Filter"]["Prefix"] == "results/v1/"
    with pytest.raises(ConfigError):
        moto_store.set_expiry(0)


@pytest.mark.timeout(60)
def test_one_store_serves_many_threads(moto_store):
    keys = [make_key(f"job-{i}", "bin") for i in range(24)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: moto_store.put(k, k.encode(), "application/octet-stream"), keys))
        assert list(pool.map(moto_store.get, keys)) == [k.encode() for k in keys]


@pytest.mark.timeout(60)
def test_unreachable_endpoint_raises_store_error():
    store = S3Store("bucket", endpoint_url=f"http://127.0.0.1:{free_port()}", **MOTO_CREDENTIALS)
    with pytest.raises(StoreError, match="Could not connect"):
        store.get(make_key("job-7", "png"))


# ---------------------------------------------------------------- s3rver: signatures are checked


@pytest.mark.timeout(300)  # the first run installs s3rver with npm
def test_expired_presigned_url_is_refused(s3rver_endpoint):
    store = S3Store(new_bucket(), "results", endpoint_url=s3rver_endpoint, presign_expiry=1, **S3RVER_CREDENTIALS)
    store.ensure_bucket()
    key = make_key("job-8", "png")
    store.put(key, PNG, "image/png")
    url, first = fetch_while_fresh(lambda: store.url(key))
    assert first.content == PNG
    wait_until_expired(url)
    late = httpx.get(url, timeout=10)
    assert late.status_code == 403
    assert b"expired" in late.content


@pytest.mark.timeout(300)
def test_tampered_presigned_url_is_refused(s3rver_store):
    key = make_key("job-9", "png")
    s3rver_store.put(key, PNG, "image/png")
    url = s3rver_store.url(key)
    assert httpx.get(url, timeout=5).content == PNG
    head, signature = url.split("X-Amz-Signature=")
    forged = signature[:10] + ("0" if signature[10] != "0" else "1") + signature[11:]
    response = httpx.get(f"{head}X-Amz-Signature={forged}", timeout=5)
    assert response.status_code == 403
    assert b"SignatureDoesNotMatch" in response.content
    other_key = url.replace(key, make_key("job-9", "png"))  # a valid signature for a different object
    assert httpx.get(other_key, timeout=5).status_code == 403


@pytest.mark.timeout(300)
def test_wrong_secret_is_a_store_error(s3rver_store, s3rver_endpoint):
    wrong = S3Store(s3rver_store.bucket, endpoint_url=s3rver_endpoint, access_key_id="S3RVER",
                    secret_access_key="not-the-secret")
    with pytest.raises(StoreError, match="SignatureDoesNotMatch"):
        wrong.put(make_key("job-10", "png"), b"x", "image/png")


@pytest.mark.timeout(300)
def test_public_base_url_points_at_the_object(s3rver_store, s3rver_endpoint):
    key = make_key("job-11", "png")
    s3rver_store.put(key, PNG, "image/png")
    public = S3Store(s3rver_store.bucket, "results", public_base_url=f"{s3rver_endpoint}/{s3rver_store.bucket}",
                     endpoint_url=s3rver_endpoint, **S3RVER_CREDENTIALS)
    assert httpx.get(public.url(key), timeout=5).content == PNG  # s3rver serves anonymous reads


@pytest.mark.timeout(300)
def test_set_expiry_without_lifecycle_support_returns_false(s3rver_store):
    assert s3rver_store.set_expiry(7) is False
