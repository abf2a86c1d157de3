"""Webhooks: when a job ends, its status JSON is POSTed to the job's callback URL.

Signed with HMAC-SHA256 over ``"<timestamp>.<body>"`` with a shared secret
(``LATENTQ_WEBHOOK_SECRET``); the ``X-Latentq-Timestamp`` and
``X-Latentq-Signature: sha256=<hex>`` headers carry it. Deliveries run on a
background thread with exponential backoff: they never block the decode
path and never fail a job.

Each attempt resolves the URL's host, checks every address against the
webhook policy (``latentq.netguard``: public addresses, plus
``LATENTQ_WEBHOOK_ALLOW``) and connects to a checked address (the URL's host
still goes in ``Host`` and TLS SNI), so a DNS answer that changed since submit
cannot send the POST to Redis or a metadata service. Redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable
from typing import Any

import httpx

from .config import webhook_policy
from .errors import InvalidRequest
from .netguard import Destination, WebhookPolicy

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "WebhookSender", "sign", "verify_signature"]

SIGNATURE_HEADER = "X-Latentq-Signature"
TIMESTAMP_HEADER = "X-Latentq-Timestamp"
log = logging.getLogger("latentq.webhooks")


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str, body: bytes, timestamp: str | int, signature: str, *,
                     tolerance_s: float = 300, now: float | None = None) -> bool:  # fmt: skip
    """What a receiver runs: a valid signature over this body, made recently (replays are refused)."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((now or time.time()) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, ts), signature)


class WebhookSender:
    def __init__(self, secret: str | None = None, *, max_attempts: int = 5, backoff_s: float = 0.5,
                 timeout_s: float = 10.0, allow: Iterable[str] | None = None) -> None:  # fmt: skip
        """``allow``: hosts / CIDR networks permitted besides public addresses (None: ``Settings.webhook_allow``)."""
        self.secret = secret if secret is not None else os.environ.get("LATENTQ_WEBHOOK_SECRET")
        self.policy = webhook_policy() if allow is None else WebhookPolicy.from_entries(allow)
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._http = httpx.Client(timeout=timeout_s, follow_redirects=False)
        self._thread = threading.Thread(target=self._run, name="latentq-webhooks", daemon=True)
        self._thread.start()

    def send(self, url: str, payload: dict[str, Any]) -> None:
        """Queue one delivery; returns at once."""
        self._queue.put((url, json.dumps(payload, separators=(",", ":")).encode()))

    def close(self, timeout: float = 30.0) -> None:
        """Deliver what is queued (within ``timeout``), then stop."""
        self._queue.put(None)
        self._thread.join(timeout)
        self._http.close()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._deliver(*item)

    def _deliver(self, url: str, body: bytes) -> None:
        for attempt in range(1, self.max_attempts + 1):
            timestamp = int(time.time())
            headers = {"content-type": "application/json", TIMESTAMP_HEADER: str(timestamp)}
            if self.secret:
                headers[SIGNATURE_HEADER] = sign(self.secret, body, timestamp)
            try:
                destination = self.policy.check(url)  # resolved now: what was fine at submit may not be
            except InvalidRequest as exc:
                log.warning("webhook to %s refused: %s", url, exc)
                return
            try:
                response = self._post(destination, body, headers)
                if response.status_code < 300:
                    return
                reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                reason = str(exc) or type(exc).__name__
            if attempt < self.max_attempts:
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.info("webhook to %s failed (%s), attempt %d; retrying in %.1f s", url, reason, attempt, delay)
                time.sleep(delay)
            else:
                log.warning("webhook to %s failed after %d attempts: %s", url, attempt, reason)

    def _post(self, destination: Destination, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST to the checked addresses in turn (the next one only if connecting failed)."""
        url = httpx.URL(destination.url)
        for index, address in enumerate(destination.addresses):
            try:
                return self._http.post(url.copy_with(host=str(address)), content=body,
                                       headers={**headers, "host": _host_header(url)},
                                       extensions={"sni_hostname": destination.host})  # fmt: skip
            except httpx.ConnectError:
                if index == len(destination.addresses) - 1:
                    raise
        raise httpx.ConnectError(f"no address for {destination.host}")


def _host_header(url: httpx.URL) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    return host if url.port is None else f"{host}:{url.port}"

