"""The deployment describes itself in Redis: its API's public URL, its result store, its URL-signing secret.

One hash (``keys.DEPLOYMENT``) holds:

- ``id`` and ``secret``: drawn once, atomically (HSETNX), by the first process that needs them. The
  secret signs the local store's result URLs; it stays in Redis and in latentq's processes, never in
  an HTTP answer.
- ``public_url``: the API's base URL, published by ``latentq api`` and ``latentq up``
  (``LATENTQ_PUBLIC_URL``, else the address the API listens on).
- ``store`` and ``store_options``: where the results are (an absolute directory, or
  ``s3://bucket/prefix`` with its endpoint, region, public base URL and presign expiry; never
  credentials), published by workers and the API.
- ``cleanups``: bumped by ``latentq cleanup``, so cached job records of deleted outputs are dropped.

So every process connected to that Redis (workers, the API, a ``Client``, the CLI) makes the same
result URLs and reads results without store settings of its own:

- local store: ``{public_url}/v1/results/{key}?expires=E&sig=S``, S the HMAC-SHA256 of key and expiry.
  Anyone holding it may fetch it until E, with no API key, as with an S3 presigned URL. A deployment
  with a local store and no API (no public URL published) has no result URLs: results are ``None``
  there, never ``file://`` paths, which would mean nothing to another machine or directory;
  ``Job.read`` still reads the directory when it is on this machine.
- S3: the store's presigned (or public) URL; a process without S3 credentials gives the API's signed
  URL instead, which redirects to a presigned one.

A process's own settings win: an explicit ``LATENTQ_STORE`` / ``--store`` or ``LATENTQ_PUBLIC_URL``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from redis import Redis

from ..config import Settings
from ..core.request import ResultObject
from ..errors import StoreError
from ..store import LocalStore, ObjectStore, open_store
from . import keys

__all__ = ["Deployment", "marker_name", "result_path", "sign_result", "signature_problem"]

log = logging.getLogger("latentq.deployment")

RESULTS_PATH = "/v1/results/"
# The published description is re-read this often (a new API's URL, a moved store); a missing
# public URL sooner: workers that started before the API learn its URL within a second.
REFRESH_S = 5.0
REFRESH_MISSING_S = 1.0
MAX_STEP_S = 300  # signed URLs' expiry is rounded up to a step: repeated reads give one URL (caches)


def result_path(key: str) -> str:
    return RESULTS_PATH + key


def _signature(secret: bytes, key: str, expires: int) -> str:
    return hmac.new(secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()


def sign_result(base_url: str, key: str, secret: bytes, ttl: int, now: float | None = None) -> str:
    """A URL of result ``key`` valid for at least ``ttl`` seconds (and at most one step more)."""
    ttl = max(1, int(ttl))
    step = min(MAX_STEP_S, max(1, ttl // 10))
    expires = (int(now if now is not None else time.time()) // step + 1) * step + ttl
    return f"{base_url.rstrip('/')}{result_path(key)}?expires={expires}&sig={_signature(secret, key, expires)}"


def signature_problem(key: str, expires: str | None, sig: str | None, secret: bytes,
                      now: float | None = None) -> tuple[str, str] | None:  # fmt: skip
    """Why a signed request of ``key`` is refused, as (field, message); None when it is valid."""
    if not expires or not sig:
        field = "sig" if expires else "expires"
        return field, "a signed result URL needs both expires and sig"
    if not expires.isdigit() or len(expires) > 12:
        return "expires", "expires must be a unix time in whole seconds"
    if not hmac.compare_digest(sig.encode(), _signature(secret, key, int(expires)).encode()):
        return "sig", "the result URL's signature does not match (altered, or signed by another deployment)"
    if int(expires) < (now if now is not None else time.time()):
        return "expires", "the result URL has expired: read the job again for a fresh one"
    return None


def marker_name(deployment_id: str) -> str:
    """A file in a local store's root naming the deployment whose workers write there.

    A process finding it knows the directory on its machine is the deployment's (and not a
    same-named one elsewhere), and reads results from it directly.
    """
    return f".latentq-deployment-{deployment_id}"


def _store_description(store: ObjectStore) -> tuple[str, dict[str, Any]]:
    if isinstance(store, LocalStore):
        return str(store.root), {}
    from ..store.s3 import S3Store  # boto3 is imported only by deployments that use S3

    if isinstance(store, S3Store):
        options = {"endpoint_url": store.endpoint_url, "region": store.client.meta.region_name,
                   "public_base_url": store.public_base_url, "presign_expiry": store.presign_expiry}  # fmt: skip
        return f"s3://{store.bucket}/{store.prefix}", {k: v for k, v in options.items() if v is not None}
    return repr(store), {}


def _open_published(location: str, options: dict[str, Any]) -> ObjectStore:
    if location.startswith("s3://"):
        from ..store.s3 import S3Store  # boto3 is imported only by deployments that use S3

        parts = urlsplit(location)
        return S3Store(parts.netloc, parts.path, **options)  # credentials: this process's own (or none)
    return LocalStore(location)


class Deployment:
    """One process's view of the deployment's description (read from Redis, briefly cached)."""

    def __init__(self, connection: Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings
        self._fields: dict[str, str] = {}
        self._read_at = float("-inf")
        self._stores: dict[str, ObjectStore] = {}
        self._lock = threading.Lock()

    # --- the description ---------------------------------------------------------------
    def describe(self, refresh: bool = False) -> dict[str, str]:
        """The hash's fields, ``id`` and ``secret`` created if this is the deployment's first process."""
        with self._lock:
            fields = self._fields
            age = time.monotonic() - self._read_at
            if refresh or age > (REFRESH_S if fields.get("public_url") else REFRESH_MISSING_S):
                # A secret this process already signs with is offered again: after a Redis flush every
                # process converges on one secret (the first to offer it).
                offered = fields.get("secret") or secrets.token_hex(32)
                with self.connection.pipeline(transaction=True) as pipe:
                    pipe.hsetnx(keys.DEPLOYMENT, "id", fields.get("id") or secrets.token_hex(8))
                    pipe.hsetnx(keys.DEPLOYMENT, "secret", offered)
                    pipe.hgetall(keys.DEPLOYMENT)
                    raw = pipe.execute()[-1]
                fields = {k.decode(): v.decode() for k, v in raw.items()}
                self._fields, self._read_at = fields, time.monotonic()
            return fields

    @property
    def id(self) -> str:
        return self.describe()["id"]

    def secret(self) -> bytes:
        return self.describe()["secret"].encode()

    def public_url(self) -> str | None:
        """The API's base URL: this process's ``LATENTQ_PUBLIC_URL``, else the published one."""
        url = self.settings.public_url or self.describe().get("public_url")
        return url.rstrip("/") if url else None

    def publish_public_url(self, url: str) -> None:
        self.connection.hset(keys.DEPLOYMENT, "public_url", url.rstrip("/"))
        self.describe(refresh=True)

    def published_store(self) -> tuple[str, dict[str, Any]] | None:
        fields = self.describe()
        if not fields.get("store"):
            return None
        return fields["store"], json.loads(fields.get("store_options") or "{}")

    # --- the store -----------------------------------------------------------------------
    def current_store(self) -> ObjectStore:
        """The store now, for a process that serves or reads results and publishes none (the API, a
        Client): its explicit setting, else the published one (followed when it moves), else the default."""
        published = None if self.settings.store else self.published_store()
        location = published[0] if published else ""
        with self._lock:
            store = self._stores.get(location)
        if store is None:
            if published is not None:
                store = _open_published(*published)
            else:
                store = open_store(self.settings.store, public_url=self.settings.public_url)
            with self._lock:
                store = self._stores.setdefault(location, store)
        return store

    def open_store(self, *, publish: bool = False) -> ObjectStore:
        """This process's store: its explicit setting, else the published one, else the default directory.

        ``publish`` (workers, the API): make it the deployment's store when it was explicit or none
        was published yet.
        """
        published = None if self.settings.store else self.published_store()
        if published is not None:
            store = _open_published(*published)
        else:
            store = open_store(self.settings.store, public_url=self.settings.public_url)
        if publish:
            self.publish_store(store, replace=published is None)
        return store

    def publish_store(self, store: ObjectStore, *, replace: bool = True) -> None:
        location, options = _store_description(store)
        if isinstance(store, LocalStore):
            try:
                store.root.mkdir(parents=True, exist_ok=True)
                (store.root / marker_name(self.id)).touch()
            except OSError as exc:
                raise StoreError(f"cannot prepare the result directory {store.root}: {exc.strerror}") from exc
        current = self.published_store()
        if current is not None and current[0] != location:
            if not replace:
                return
            log.warning("the deployment's result store changes from %s to %s", current[0], location)
        self.connection.hset(keys.DEPLOYMENT, mapping={"store": location, "store_options": json.dumps(options)})
        self.describe(refresh=True)

    def is_local(self, store: ObjectStore) -> bool:
        """True when ``store`` is a directory on this machine that the deployment's workers write to."""
        return isinstance(store, LocalStore) and (store.root / marker_name(self.id)).is_file()

    # --- result URLs ---------------------------------------------------------------------
    def result_url(self, store: ObjectStore, key: str, base_url: str | None = None) -> str | None:
        """The URL a client fetches result ``key`` from (None: a local store and no API to serve it)."""
        if not store.served_by_api:
            try:
                return store.url(key)
            except StoreError:  # no S3 credentials here: the API's signed URL redirects to a presigned one
                pass
        base = base_url or self.public_url()
        if not base:
            return None
        return sign_result(base, key, self.secret(), self.settings.result_url_ttl)

    def url_for(self, store: ObjectStore, base_url: str | None = None) -> Callable[[str], str | None]:
        return lambda key: self.result_url(store, key, base_url)

    def check_signature(self, key: str, expires: str | None, sig: str | None) -> tuple[str, str] | None:
        return signature_problem(key, expires, sig, self.secret())

    # --- reading results -------------------------------------------------------------------
    def read_result(self, store: ObjectStore, result: ResultObject) -> bytes:
        """A result's bytes: from the directory when it is here, from S3 with this process's
        credentials, else over HTTP from its URL (signed: no API key needed)."""
        if self.is_local(store):
            return store.get(result.key)
        if not store.served_by_api:
            try:
                return store.get(result.key)
            except StoreError:
                if not result.url:
                    raise
        if result.url:
            return _fetch(result.key, result.url)
        where = f"directory {store.root}" if isinstance(store, LocalStore) else repr(store)
        raise StoreError(f"result {result.key!r} is in the {where}, which is not on this machine, and the "
                         "deployment has no API to fetch it through: start `latentq api` (or set "
                         "LATENTQ_PUBLIC_URL)")  # fmt: skip

    # --- cleanup ---------------------------------------------------------------------------
    def cleanups(self) -> int:
        """How many cleanups deleted something so far (cached records older than the last are dropped)."""
        return int(self.connection.hget(keys.DEPLOYMENT, "cleanups") or 0)

    def record_cleanup(self) -> None:
        self.connection.hincrby(keys.DEPLOYMENT, "cleanups", 1)


def _fetch(key: str, url: str) -> bytes:
    import httpx

    try:
        response = httpx.get(url, follow_redirects=True, timeout=60)
    except httpx.HTTPError as exc:
        raise StoreError(f"cannot fetch result {key!r}: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise StoreError(f"cannot fetch result {key!r}: HTTP {response.status_code} from {urlsplit(url).netloc}")
    return response.content
