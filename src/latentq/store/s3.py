"""An S3 object store: results go to ``s3://bucket/prefix/<key>`` and clients fetch them by URL.

Built on boto3 because its SigV4 presigning is mature and well tested, and the same client
works against any S3-compatible endpoint (AWS, MinIO, Cloudflare R2, moto, s3rver) given an
``endpoint_url``. boto3 clients are thread-safe, so one client, made once from a private
session (sessions are not thread-safe), serves every thread.
"""

from __future__ import annotations

import datetime
import re
from typing import Any
from urllib.parse import urlsplit

from ..config import s3_options_from_env
from ..errors import ConfigError, StoreError
from .base import check_key

_URL = re.compile(r'"?\b[a-z][a-z0-9+.-]*://[^\s"]*"?', re.I)

__all__ = ["MAX_PRESIGN_EXPIRY", "S3Store", "S3StoreError"]

MAX_PRESIGN_EXPIRY = 7 * 24 * 3600  # SigV4 refuses longer
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_NO_LIFECYCLE = {"NotImplemented", "NotImplementedError", "MethodNotAllowed", "501", "405"}


class S3StoreError(StoreError):
    """A StoreError from S3; ``code`` is the S3 error code ("NoSuchKey", "AccessDenied", ...) or ""."""
    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class S3Store:
    served_by_api = False

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        presign_expiry: int = 3600,
        public_base_url: str | None = None,
        cache_control: str = "public, max-age=31536000, immutable",
        client: Any = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ConfigError(f"invalid S3 bucket name {bucket!r}")
        parts = [part for part in prefix.strip("/").split("/") if part]
        if any(part in (".", "..") for part in parts):
            raise ConfigError(f"invalid S3 key prefix {prefix!r}")
        if not 1 <= presign_expiry <= MAX_PRESIGN_EXPIRY:
            raise ConfigError(f"presign expiry must be 1..{MAX_PRESIGN_EXPIRY} seconds, not {presign_expiry}")
        self.bucket = bucket
        self.prefix = "/".join(parts)
        self.endpoint_url = endpoint_url
        self.presign_expiry = presign_expiry
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.cache_control = cache_control
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                signature_version="s3v4",
                # path style lets http://localhost:9000/bucket/key work (no bucket.localhost DNS)
                s3={"addressing_style": "path" if endpoint_url else "auto"},
                retries={"max_attempts": 4, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
                # default CRC checksums trip up some S3-compatible servers; send them only when required
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            session = boto3.session.Session(  # a private session: the default one is not thread-safe
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                aws_session_token=session_token,
                region_name=region or ("us-east-1" if endpoint_url else None),
            )
            client = session.client("s3", endpoint_url=endpoint_url, config=config)
        self.client = client  # thread-safe; shared by every thread using this store

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> S3Store:
        """``s3://bucket/optional/prefix``, the rest from ``LATENTQ_S3_*`` / ``AWS_*`` variables."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError(f"invalid S3 store URL {url!r}: expected s3://bucket/prefix")

        options: dict[str, Any] = s3_options_from_env()
        options.update(overrides)
        return cls(parts.netloc, parts.path, **options)

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3Store('s3://{self.bucket}/{self.prefix}'{where})"

    def object_key(self, key: str) -> str:
        """The key in the bucket of result ``key`` (checked: it cannot climb out of the prefix)."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, action: str, key: str, exc: Exception, code: str = "") -> S3StoreError:
        # Messages reach job statuses: the endpoint's (internal) URL that botocore puts in some is left out.
        why = _URL.sub("<endpoint>", str(exc)) or type(exc).__name__
        return S3StoreError(f"S3 {action} of s3://{self.bucket}/{key} failed: {why}", code)

    def _call(self, action: str, key: str, method: str, **kwargs: Any) -> Any:
        """``self.client.<method>(**kwargs)``, every botocore error turned into an S3StoreError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "NotFound", "404") and key:
                raise S3StoreError(f"no result object {key!r} in s3://{self.bucket} ({code})", code) from exc
            raise self._fail(action, key, exc, code) from exc
        except BotoCoreError as exc:
            raise self._fail(action, key, exc) from exc

    def put(self, key: str, data: bytes, content_type: str) -> None:
        name = self.object_key(key)
        self._call("write", name, "put_object", Bucket=self.bucket, Key=name, Body=data,
                   ContentType=content_type, CacheControl=self.cache_control)

    def get(self, key: str) -> bytes:
        name = self.object_key(key)
        from botocore.exceptions import BotoCoreError

        response = self._call("read", name, "get_object", Bucket=self.bucket, Key=name)
        try:
            with response["Body"] as body:
                return body.read()
        except (BotoCoreError, OSError) as exc:
            raise self._fail("read", name, exc) from exc

    def exists(self, key: str) -> bool:
        name = self.object_key(key)
        try:
            self._call("lookup", name, "head_object", Bucket=self.bucket, Key=name)
        except S3StoreError as exc:
            if exc.code in _MISSING:
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        name = self.object_key(key)
        self._call("delete", name, "delete_object", Bucket=self.bucket, Key=name)

    def url(self, key: str) -> str:
        name = self.object_key(key)
        if self.public_base_url:
            return f"{self.public_base_url}/{name}"
        params = {"Bucket": self.bucket, "Key": name}
        return self._call("presign", name, "generate_presigned_url", ClientMethod="get_object",
                          Params=params, ExpiresIn=self.presign_expiry)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet."""
        try:
            self._call("bucket lookup", "", "head_bucket", Bucket=self.bucket)
            return
        except S3StoreError as exc:
            if exc.code not in _MISSING:
                raise
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self.client.meta.region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._call("bucket creation", "", "create_bucket", **kwargs)
        except S3StoreError as exc:
            if exc.code != "BucketAlreadyOwnedByYou":
                raise

    def set_expiry(self, days: int) -> bool:
        """Expire objects under the prefix after ``days`` days (a lifecycle rule; other rules are kept).

        Returns False when the server does not support lifecycle rules.
        """
        if days < 1:
            raise ConfigError(f"expiry must be at least 1 day, not {days}")
        rule_id = f"latentq-expiry:{self.prefix or '*'}"
        rule = {"ID": rule_id, "Status": "Enabled", "Filter": {"Prefix": f"{self.prefix}/" if self.prefix else ""},
                "Expiration": {"Days": days}}
        try:
            current = self._call("lifecycle lookup", "", "get_bucket_lifecycle_configuration", Bucket=self.bucket)
            rules = [r for r in current.get("Rules", []) if r.get("ID") != rule_id]
        except S3StoreError as exc:
            if exc.code in _NO_LIFECYCLE:
                return False
            if exc.code != "NoSuchLifecycleConfiguration":
                raise
            rules = []
        try:
            self._call("lifecycle update", "", "put_bucket_lifecycle_configuration", Bucket=self.bucket,
                       LifecycleConfiguration={"Rules": [*rules, rule]})
        except S3StoreError as exc:
            if exc.code in _NO_LIFECYCLE:
                return False
            raise
        return True

    def expire(self, older_than_seconds: float) -> int:
        """Delete objects under the prefix last modified more than ``older_than_seconds`` ago; returns how many.

        The fallback for servers without lifecycle rules (and for sub-day TTLs): a listing and batched deletes.
        """
        cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=older_than_seconds)
        listing: dict[str, Any] = {"Bucket": self.bucket, "Prefix": f"{self.prefix}/" if self.prefix else ""}
        deleted = 0
        while True:
            page = self._call("listing", listing["Prefix"], "list_objects_v2", **listing)
            old = [item["Key"] for item in page.get("Contents", []) if item["LastModified"] < cutoff]
            for start in range(0, len(old), 1000):  # DeleteObjects takes at most 1000 keys
                chunk = old[start : start + 1000]
                answer = self._call("delete", listing["Prefix"], "delete_objects", Bucket=self.bucket,
                                    Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True})
                errors = answer.get("Errors") or []
                if errors:
                    first = errors[0]
                    raise S3StoreError(f"S3 delete of s3://{self.bucket}/{first.get('Key')} failed: "
                                       f"{first.get('Message')}", str(first.get("Code", "")))
                deleted += len(chunk)
            if not page.get("IsTruncated"):
                return deleted
            listing["ContinuationToken"] = page["NextContinuationToken"]
