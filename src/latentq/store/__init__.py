"""Object stores for results: a local directory by default, S3-compatible for deployments."""

from __future__ import annotations

from ..config import store_from_env
from ..errors import ConfigError
from .base import ObjectStore, check_key, make_key
from .local import DEFAULT_DIRECTORY, LocalStore

__all__ = ["LocalStore", "ObjectStore", "check_key", "make_key", "open_store"]


def open_store(location: str | None = None, *, public_url: str | None = None) -> ObjectStore:
    """``location``: a directory path or ``s3://bucket/prefix`` (default ``$LATENTQ_STORE`` or ./latentq-results)."""
    own_location, own_public_url = store_from_env()
    location = location or own_location or DEFAULT_DIRECTORY
    public_url = public_url or own_public_url
    if location.startswith("s3://"):
        from .s3 import S3Store  # boto3 is imported only by deployments that use S3

        return S3Store.from_url(location)
    if "://" in location and not location.startswith("file://"):
        raise ConfigError(f"unsupported store {location!r}: give a directory path or s3://bucket/prefix")
    return LocalStore(location.removeprefix("file://"), public_url=public_url)
