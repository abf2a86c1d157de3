"""A finished job's record in the object store, next to its outputs.

Redis holds a finished job's RQ record only for ``LATENTQ_RECORD_TTL``
seconds (default 60): long enough for waiting clients, webhooks and RQ's
tools to see it, short enough that Redis memory follows the live jobs and
not the retention period. The worker writes the same status (results by key,
timings, batch) to the store before it marks the job finished, so a job is
always answerable from one or the other, and the record lives as long as its
outputs (``LATENTQ_RESULT_TTL``, ``latentq cleanup``, S3 lifecycle rules).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable

from .errors import StoreError
from .spec import JobInfo
from .store.base import ObjectStore, job_directory

__all__ = ["RECORD_NAME", "RecordReader", "record_key", "is_record_key", "write_record", "read_record"]

RECORD_NAME = "job-record.json"
RECORD_VERSION = 1


def record_key(job_id: str) -> str:
    """The record sits in the job's own directory (or prefix): one cleanup removes both."""
    return f"{job_directory(job_id)}/{RECORD_NAME}"


def is_record_key(key: str) -> bool:
    """Records are not result objects: ``GET /v1/results`` never serves one."""
    return key.rsplit("/", 1)[-1] == RECORD_NAME


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
    """

    def __init__(self, store: ObjectStore, size: int = 4096) -> None:
        self.store = store
        self.size = size
        self._cache: OrderedDict[str, JobInfo] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, job_id: str, url_for: Callable[[str], str | None]) -> JobInfo | None:
        with self._lock:
            info = self._cache.get(job_id)
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

