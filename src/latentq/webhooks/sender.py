"""Webhooks as the Standard Webhooks specification has them: one signed POST per attempt.

Every delivery carries ``webhook-id`` (one per job event, the same on every
retry: receivers deduplicate on it), ``webhook-timestamp`` (seconds, of this
attempt) and, when a secret is configured, ``webhook-signature``:
``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``. The body is
``{"type": "job.<status>", "timestamp": <ISO 8601>, "data": <the job's status JSON>}``.

``LATENTQ_WEBHOOK_SECRET`` is either the spec's ``whsec_<base64 key>`` (the
key is the decoded bytes) or any other string (the key is its UTF-8 bytes);
``standard_secret`` turns the latter into the former for receivers'
libraries (``standardwebhooks.Webhook(standard_secret(secret))``).

This module makes one attempt at a time; the outbox (``latentq.webhooks.outbox``)
keeps deliveries in Redis and retries them. Each attempt resolves the URL's
host, checks every address against the webhook policy (``latentq.core.netguard``:
public addresses, plus ``LATENTQ_WEBHOOK_ALLOW``) and connects to a checked
address (the URL's host still goes in ``Host`` and TLS SNI), so a DNS answer
that changed since submit cannot send the POST to Redis or a metadata
service. Redirects are not followed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import httpx

from ..config import webhook_policy, webhook_secret_from_env
from ..core.netguard import Destination, WebhookPolicy
from ..errors import ConfigError, InvalidRequest
from ..state.outbox import event_body, event_type, message_id

__all__ = [
    "ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Attempt",
    "WebhookSender",
    "event_body",
    "event_type",
    "message_id",
    "secret_key",
    "sign",
    "standard_secret",
    "verify_signature",
]

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
log = logging.getLogger("latentq.webhooks")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a configured secret: ``whsec_<base64>`` decoded, any other string as UTF-8."""
    if secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX):]
        try:  # padding optional, as the spec's libraries take it
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("LATENTQ_WEBHOOK_SECRET starts with whsec_ but the rest is not base64") from None
    return secret.encode()


def standard_secret(secret: str) -> str:
    """The ``whsec_<base64>`` form of a secret, as Standard Webhooks libraries take it."""
    if secret.startswith(SECRET_PREFIX):
        return secret
    return SECRET_PREFIX + base64.b64encode(secret.encode()).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``."""
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify_signature(secret: str, body: bytes, headers: Mapping[str, str], *, tolerance_s: float = 300,
                     now: float | None = None) -> bool:  # fmt: skip
    """What a receiver runs: one of the header's signatures is valid for this id, timestamp and body,
    and the timestamp is recent (replays are refused)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id, signatures = lowered.get(ID_HEADER, ""), lowered.get(SIGNATURE_HEADER, "")
    try:
        timestamp = int(lowered.get(TIMESTAMP_HEADER, ""))
    except ValueError:
        return False
    if not msg_id or abs((now or time.time()) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, msg_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures.split())


@dataclass(frozen=True)
class Attempt:
    """One attempt's outcome: ``delivered``, or not and whether a retry may do better."""

    delivered: bool
    retry: bool = False
    reason: str = ""


_warned_unsigned = threading.Event()


class WebhookSender:
    """Makes single, signed, policy-checked delivery attempts (thread-safe)."""

    def __init__(self, secret: str | None = None, *, timeout_s: float = 10.0,
                 allow: Iterable[str] | None = None) -> None:  # fmt: skip
        """``secret``: None reads ``LATENTQ_WEBHOOK_SECRET``; ``allow``: hosts / CIDR networks permitted
        besides public addresses (None: ``LATENTQ_WEBHOOK_ALLOW``)."""
        self.secret = secret if secret is not None else webhook_secret_from_env()
        if self.secret:
            secret_key(self.secret)  # a malformed whsec_ value fails at start, not per delivery
        self.policy = webhook_policy() if allow is None else WebhookPolicy.from_entries(allow)
        self._http = httpx.Client(timeout=timeout_s, follow_redirects=False)

    def headers(self, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        timestamp = int(time.time()) if timestamp is None else timestamp
        headers = {"content-type": "application/json", ID_HEADER: msg_id, TIMESTAMP_HEADER: str(timestamp)}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, msg_id, timestamp, body)
        elif not _warned_unsigned.is_set():  # once per process, and only once a webhook is actually sent
            _warned_unsigned.set()
            log.warning("LATENTQ_WEBHOOK_SECRET is not set: webhooks are sent unsigned")
        return headers

    def deliver(self, url: str, msg_id: str, body: bytes) -> Attempt:
        """POST ``body`` once; never raises for the receiver's or the network's trouble."""
        try:
            destination = self.policy.check(url)  # resolved now: what was fine at submit may not be
        except InvalidRequest as exc:
            return Attempt(False, retry=False, reason=f"refused: {exc}")
        try:
            response = self._post(destination, body, self.headers(msg_id, body))
        except httpx.HTTPError as exc:
            return Attempt(False, retry=True, reason=str(exc) or type(exc).__name__)
        if response.status_code < 300:
            return Attempt(True)
        # 410 Gone: the receiver asks for no more deliveries to this endpoint (the spec's convention).
        return Attempt(False, retry=response.status_code != 410, reason=f"HTTP {response.status_code}")

    def close(self) -> None:
        self._http.close()

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
