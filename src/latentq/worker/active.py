"""The jobs a worker holds, behind their leases, and those it lost.

A job is held from its start (``DecodeWorker.take``) until it ends: committed finished, failed, or let go
when Redis stayed unreachable past its lease. Its lease is renewed while it is held (``upkeep``). A job
whose lease lapsed while held is lost: another worker runs it, and its outputs are not stored here
(``finishing``); it is forgotten once its finishing step has seen that.

Shared by the decoding thread, the encode threads, the committer and the heartbeat thread: every method
is atomic.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from .work_item import WorkItem

__all__ = ["ActiveJobs"]


class ActiveJobs:
    def __init__(self) -> None:
        self._held: dict[str, WorkItem] = {}
        self._lost: set[str] = set()  # jobs whose lease lapsed: their outputs are not stored
        self._lock = threading.Lock()

    def add(self, items: Iterable[WorkItem]) -> None:
        """Started jobs: held from now on (their leases are renewed)."""
        with self._lock:
            self._held.update((item.id, item) for item in items)

    def held(self) -> list[WorkItem]:
        """The jobs held now (a snapshot: the leases to renew)."""
        with self._lock:
            return list(self._held.values())

    def finished(self, job_id: str) -> None:
        """The job was committed finished: no longer held."""
        with self._lock:
            self._held.pop(job_id, None)

    def forget(self, job_id: str) -> None:
        """The job ended here (failed, or let go to recovery), or its loss was seen: neither held nor lost."""
        with self._lock:
            self._held.pop(job_id, None)
            self._lost.discard(job_id)

    def mark_lost(self, job_id: str) -> None:
        """The job's lease lapsed: no longer held; its outputs are not to be stored."""
        with self._lock:
            self._held.pop(job_id, None)
            self._lost.add(job_id)

    def is_lost(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._lost

    def __contains__(self, job_id: object) -> bool:
        """Whether the job is held."""
        with self._lock:
            return job_id in self._held

