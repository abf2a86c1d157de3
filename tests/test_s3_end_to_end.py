"""Results in a real S3 wire server (s3rver: it checks SigV4 signatures and expiry), through workers and the API."""

from __future__ import annotations

import httpx
import pytest
import torch
from conftest import S3RVER_CREDENTIALS, use_s3_store
from helpers import fetch_while_fresh, presigned_window, wait_until_expired

from latentq.core.wire import latent_to_bytes
from latentq.store.base import make_key

boto3 = pytest.importorskip("boto3")

PREFIX = "results/e2e"


@pytest.fixture
def s3_env(env, s3rver_endpoint, monkeypatch) -> dict[str, str]:
    """Workers and the API started afterwards store into a fresh bucket of s3rver."""
    return use_s3_store(env, monkeypatch, s3rver_endpoint, S3RVER_CREDENTIALS, PREFIX)


def raw_s3(endpoint: str):
    return boto3.session.Session(
        aws_access_key_id=S3RVER_CREDENTIALS["access_key_id"],
        aws_secret_access_key=S3RVER_CREDENTIALS["secret_access_key"],
        region_name="us-east-1",
    ).client("s3", endpoint_url=endpoint)


def decoded(api: str) -> dict:
    submitted = httpx.post(f"{api}/v1/jobs", params={"model": "taef2"}, content=latent_to_bytes(torch.randn(32, 6, 8)))
    assert submitted.status_code == 202, submitted.text
    status = httpx.get(submitted.json()["status_url"], params={"wait": 60}, timeout=90).json()
    assert status["status"] == "finished", status
    return status


@pytest.mark.timeout(300)  # the first run may install s3rver with npm
def test_result_lands_in_the_bucket_and_its_presigned_url_downloads_it(s3_env, procs):
    procs.worker("taef2")
    api = procs.api()
    (result,) = decoded(api)["results"]
    key, bucket, endpoint = result["key"], s3_env["bucket"], s3_env["endpoint"]

    s3 = raw_s3(endpoint)
    listing = s3.list_objects_v2(Bucket=bucket)
    # Under the configured prefix: the result, and the job's record next to it.
    job_id = key.split("/")[0]
    assert sorted(item["Key"] for item in listing["Contents"]) == sorted(
        [f"{PREFIX}/{key}", f"{PREFIX}/{job_id}/job-record.json"]
    )
    head = s3.head_object(Bucket=bucket, Key=f"{PREFIX}/{key}")
    assert head["ContentType"] == "image/png" and head["ContentLength"] == result["bytes"]
    stored = s3.get_object(Bucket=bucket, Key=f"{PREFIX}/{key}")["Body"].read()

    url = result["url"]
    assert url.startswith(f"{endpoint}/{bucket}/{PREFIX}/{key}?") and "X-Amz-Signature=" in url
    download = httpx.get(url, timeout=10)  # plain HTTP, no credentials
    assert download.status_code == 200 and download.content == stored
    assert download.headers["content-type"] == "image/png"

    # The API's own result route redirects to a presigned URL for S3 stores.
    redirect = httpx.get(f"{api}/v1/results/{key}")
    assert redirect.status_code == 307 and redirect.headers["location"].startswith(f"{endpoint}/{bucket}/{PREFIX}/{key}?")

    head_part, signature = url.split("X-Amz-Signature=")
    forged = signature[:5] + ("0" if signature[5] != "0" else "1") + signature[6:]
    tampered = httpx.get(f"{head_part}X-Amz-Signature={forged}", timeout=10)
    assert tampered.status_code == 403 and b"SignatureDoesNotMatch" in tampered.content
    other = make_key("someone-else", "png")
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}/{other}", Body=b"private")
    assert httpx.get(url.replace(key, other), timeout=10).status_code == 403  # a signature is for one object


@pytest.mark.timeout(300)
def test_an_expired_presigned_url_is_refused(s3_env, procs, monkeypatch):
    procs.env["LATENTQ_S3_PRESIGN_EXPIRY"] = "1"
    monkeypatch.setenv("LATENTQ_S3_PRESIGN_EXPIRY", "1")
    procs.worker("taef2")
    api = procs.api()
    status_url = f"{api}/v1/jobs/{decoded(api)['id']}"

    url, _ = fetch_while_fresh(lambda: httpx.get(status_url, timeout=30).json()["results"][0]["url"])
    assert presigned_window(url)[1] == 1
    wait_until_expired(url)
    late = httpx.get(url, timeout=10)
    assert late.status_code == 403 and b"expired" in late.content
