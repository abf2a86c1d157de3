"""The ObjectStore protocol and result keys.

A key is ``<job-id>/<index>-<token>.<ext>``: the token, random and drawn once
per job by its producer, makes result URLs unguessable even to someone who
knows the job id, and gives a job decoded twice (a frozen worker's late run)
the same keys, so no output ever exists twice. The fixed alphabet keeps keys
from escaping a directory or bucket prefix.
"""

from __future__ import annotations

import re
import secrets
from typing import Protocol, runtime_checkable

from ..errors import StoreError

__all__ = ["KEY_PATTERN", "ObjectStore", "check_key", "job_directory", "make_key"]

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}/[A-Za-z0-9_-]{8,64}(\.[a-z0-9]{1,12})?$")


def job_directory(job_id: str) -> str:
    """The first segment of a job's keys: its id, confined to the key alphabet."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", job_id)[:64]


def make_key(job_id: str, ext: str, index: int | str = 0, token: str | None = None) -> str:
    """``token``: the job's output token (jobs from producers that drew none get a random one per object)."""
    token = token if token and re.fullmatch(r"[A-Za-z0-9_-]{8,48}", token) else secrets.token_urlsafe(16)
    return f"{job_directory(job_id)}/{index}-{token}.{ext}"


def check_key(key: str) -> str:
    if not KEY_PATTERN.match(key):
        raise StoreError(f"invalid result key {key!r}")
    return key


@runtime_checkable
class ObjectStore(Protocol):
    """Where result objects go. Implementations must be safe to call from threads."""

    #: True when the store has no URL of its own and the API serves its objects.
    served_by_api: bool

    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def url(self, key: str) -> str:
        """A URL a client can fetch the object from directly."""
        ...
