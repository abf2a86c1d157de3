"""``latentq cleanup``: delete results (and finished jobs' records) older than the result TTL."""

from __future__ import annotations

import argparse
import logging

__all__ = ["cmd_cleanup"]


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Results and finished jobs' stored records live LATENTQ_RESULT_TTL seconds: delete what is older."""
    import math

    from ..config import Settings
    from ..errors import ConfigError
    from ..store import LocalStore, open_store
    from ..store.s3 import S3Store

    settings = Settings.from_env()
    ttl = settings.result_ttl if args.older_than is None else args.older_than
    if ttl < 0:
        raise ConfigError(f"--older-than must be >= 0 seconds, not {ttl:g}")
    deployment = _reachable_deployment(settings)
    if deployment is not None:  # its store (unless one is given here)
        store = deployment.current_store()
    else:
        store = open_store(settings.store, public_url=settings.public_url)
    if isinstance(store, LocalStore):
        deleted: list[str] = []
        print(f"deleted {store.expire(ttl, deleted)} result object(s) older than {ttl:g} s from {store.root}")
        if deployment is not None and deleted:
            _forget_deleted(deployment, deleted)
        return 0
    if not isinstance(store, S3Store):
        raise ConfigError(f"cleanup does not know how to expire {store!r}")
    where = f"s3://{store.bucket}/{store.prefix}"
    # Lifecycle rules count whole days: round up so no object goes before its TTL.
    days = max(1, math.ceil(ttl / 86400))
    lifecycle = store.set_expiry(days)
    if lifecycle:
        print(f"lifecycle rule set: objects under {where} expire after {days} day(s)")
    else:
        print(f"{where}: the server does not support lifecycle rules; deleting old objects by listing")
    if args.sweep or not lifecycle:
        count = store.expire(ttl)
        print(f"deleted {count} result object(s) older than {ttl:g} s from {where}")
        if deployment is not None and count:
            deployment.record_cleanup()  # (S3's listing does not name the jobs: their RQ records lapse by themselves)
    return 0


def _reachable_deployment(settings):
    """The deployment in Redis, or None when Redis cannot be reached (cleanup of a store alone still works)."""
    from ..state.connection import REDIS_DOWN, redis_from_url
    from ..state.deployment import Deployment

    connection = redis_from_url(settings.redis_url)
    try:
        connection.ping()
    except REDIS_DOWN as exc:
        logging.getLogger("latentq").warning("Redis at %s is unreachable (%s): cleaning the store only, "
                                             "cached job records are not told", settings.redis_url, exc)  # fmt: skip
        connection.close()
        return None
    return Deployment(connection, settings)


def _forget_deleted(deployment, keys: list[str]) -> None:
    """Jobs whose outputs were deleted read as gone: their RQ records go, every process's cache is dropped."""
    from ..state.records import forget_finished, job_of_record

    jobs = [job for job in map(job_of_record, keys) if job]
    forget_finished(deployment.connection, jobs)
    deployment.record_cleanup()
