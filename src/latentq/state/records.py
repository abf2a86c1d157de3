"""A finished job's record in the object store, next to its outputs.

Redis holds a finished job's RQ record only for ``LATENTQ_RECORD_TTL``
seconds (default 60): long enough for waiting clients, webhooks and RQ's
tools to see it, short enough that Redis memory follows the live jobs and
not the retention period. The worker writes the same status (results by key,
timings, batch) to the store before it marks the job finished, so a job is
always answerable from one or the other, and the record lives as long as its
outputs (``LATENTQ_RESULT_TTL``, ``latentq cleanup``, S3 lifecycle rules).

Once its outputs are deleted a job reads as gone (``JobNotFound``, HTTP 404), as one that never
existed: ``latentq cleanup`` deletes the RQ records of the finished jobs whose stored records it
deleted and bumps the deployment's cleanup counter, which drops every process's cached records.
"""

from __future__ import annotations

import datetime
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from ..core.request import JobInfo
from ..errors import StoreError
from ..store.base import ObjectStore, job_directory

__all__ = ["RECORD_NAME", "RecordReader", "forget_finished", "is_record_key", "job_of_record", "read_record",
           "record_key", "write_record"]

RECORD_NAME = "job-record.json"
RECORD_VERSION = 1


def record_key(job_id: str) -> str:
    """The record sits in the job's own directory (or prefix): one cleanup removes both."""
    return f"{job_directory(job_id)}/{RECORD_NAME}"


def is_record_key(key: str) -> bool:
    """Records are not result objects: ``GET /v1/results`` never serves one."""
    return key.rsplit("/", 1)[-1] == RECORD_NAME


def job_of_record(key: str) -> str | None:
    """The job id (its directory) of a record key, None for any other key."""
    return key.rsplit("/", 1)[0] if is_record_key(key) and "/" in key else None


def forget_finished(connection: Redis, job_ids: Iterable[str]) -> int:
    """Delete the RQ records of these jobs that finished (their outputs were just deleted); returns how many.

    Redis keeps a finished job's record ``LATENTQ_RECORD_TTL`` seconds: without this, a cleanup
    inside that time would leave the job reading "finished" with URLs to nothing.
    """
    forgotten = 0
    for job_id in job_ids:
        try:
            job = RQJob.fetch(job_id, connection=connection, serializer=JSONSerializer)
        except NoSuchJobError:
            continue
        if job.get_status(refresh=False).value == "finished":
            job.delete()
            forgotten += 1
    return forgotten


def write_record(store: ObjectStore, info: JobInfo) -> None:
    """Store a job's final status; URLs are left out (they are made when it is read: presigned ones expire)."""
    data = info.to_dict()
    data["results"] = [{**item, "url": None} for item in data["results"]]
    if data.get("preview"):
        data["preview"] = {**data["preview"], "url": None}
    # Live-only fields of a waiting job mean nothing once it has ended.
    for name in ("queue_position", "workers", "waiting_reason"):
        data.pop(name, None)
    body = json.dumps({"version": RECORD_VERSION, "job": data}, separators=(",", ":")).encode()
    store.put(record_key(info.id), body, "application/json")


def read_record(store: ObjectStore, job_id: str, url_for: Callable[[str], str | None]) -> JobInfo | None:
    """The stored status of an ended job, with fresh URLs; None when there is none."""
    key = record_key(job_id)
    try:
        raw = store.get(key)  # one request when it is there (the usual case for an ended job)
    except StoreError:
        if not store.exists(key):
            return None
        raise  # the store failed, the record is there
    data = json.loads(raw)["job"]
    info = JobInfo.from_dict(data)
    if info.id != job_id:
        return None  # a sanitised id that maps onto another job's directory
    return info.with_urls(url_for)


class RecordReader:
    """Reads stored records through a small LRU cache.

    A record is read only once Redis has dropped the job, and the job had ended by then: it no
    longer changes. Repeated polls of an ended job or batch (``GET /v1/batches/{id}`` of a
    thousand jobs) then cost no store request (an S3 GET each, otherwise).

    Deleted outputs end a cached record: ``cleanups()`` (the deployment's cleanup counter, one
    Redis read) changing drops the cache, and a record older than ``max_age`` seconds (the result
    TTL, after which S3 lifecycle rules delete it unannounced) is read from the store again.
    """

    def __init__(self, store: ObjectStore, size: int = 4096, *, cleanups: Callable[[], int] | None = None,
                 max_age: float | None = None) -> None:  # fmt: skip
        self.store = store
        self.size = size
        self.cleanups = cleanups
        self.max_age = max_age
        self._cache: OrderedDict[str, JobInfo] = OrderedDict()
        self._seen_cleanups: int | None = None
        self._lock = threading.Lock()

    def _past_max_age(self, info: JobInfo) -> bool:
        if self.max_age is None or not info.ended_at:
            return False
        ended = datetime.datetime.fromisoformat(info.ended_at)
        if ended.tzinfo is None:
            ended = ended.replace(tzinfo=datetime.UTC)
        age = datetime.datetime.now(datetime.UTC) - ended
        return age.total_seconds() > self.max_age

    def read(self, job_id: str, url_for: Callable[[str], str | None]) -> JobInfo | None:
        cleanups = self.cleanups() if self.cleanups is not None else None
        with self._lock:
            if cleanups != self._seen_cleanups:
                self._cache.clear()
                self._seen_cleanups = cleanups
            info = self._cache.get(job_id)
            if info is not None and self._past_max_age(info):
                del self._cache[job_id]
                info = None
            if info is not None:
                self._cache.move_to_end(job_id)
        if info is None:
            info = read_record(self.store, job_id, lambda key: None)
            if info is None:
                return None  # not cached: it may be written later (a job that is still running)
            with self._lock:
                self._cache[job_id] = info
                while len(self._cache) > self.size:
                    self._cache.popitem(last=False)
        return info.with_urls(url_for)

