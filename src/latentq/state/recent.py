"""Each tenant's recent jobs: a sorted set (job id -> submit time) that ``GET /v1/jobs`` pages through.

The submit paths add a job in the same pipeline (or script) as its enqueue, so an enqueued job is
always listed. The set is trimmed to ``RECENT_JOBS_LIMIT`` on every add; a listed job that has since
gone (older than its record's TTL, cleaned up) is skipped by the listing and forgotten, so each stale
entry costs one read, once.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from redis.client import Pipeline

from . import keys
from .tenants import DEFAULT_TENANT

__all__ = ["DEFAULT_TENANT", "RECENT_JOBS_LIMIT", "Cursor", "forget_recent_jobs", "index_recent_job", "recent_job_ids"]

RECENT_JOBS_LIMIT = 10_000

Cursor = tuple[float, str]  # the last listed job's (submit time, id): the next page starts after it


def index_recent_job(pipe: Redis | Pipeline | Any, tenant: str, job_id: str, submitted_at: float) -> None:
    """Add one job to the tenant's recent jobs and trim the oldest beyond the bound (two writes, no reads)."""
    key = keys.recent_jobs_key(tenant)
    pipe.zadd(key, {job_id: submitted_at})
    pipe.zremrangebyrank(key, 0, -RECENT_JOBS_LIMIT - 1)


def recent_job_ids(connection: Redis, tenant: str, count: int, after: Cursor | None = None) -> list[Cursor]:
    """Up to ``count`` (submit time, id) pairs, newest first, strictly after ``after`` in that order.

    Jobs submitted together share a submit time; among them the order is Redis's (by id, descending),
    so a cursor inside such a group resumes with the ids below its own.
    """
    key = keys.recent_jobs_key(tenant)
    if after is None:
        rows = connection.zrevrange(key, 0, count - 1, withscores=True)
        return [(score, member.decode()) for member, score in rows]
    score, last_id = after
    ties = [m.decode() for m in connection.zrevrangebyscore(key, score, score)]
    found = [(score, job_id) for job_id in ties if job_id < last_id][:count]
    if len(found) < count:
        rows = connection.zrevrangebyscore(key, f"({score}", "-inf", start=0, num=count - len(found), withscores=True)
        found += [(row_score, member.decode()) for member, row_score in rows]
    return found


def forget_recent_jobs(connection: Redis, tenant: str, job_ids: list[str]) -> None:
    """Drop jobs that no longer exist from the tenant's recent jobs."""
    if job_ids:
        connection.zrem(keys.recent_jobs_key(tenant), *job_ids)
