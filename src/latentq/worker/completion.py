"""Marking finished jobs finished: many jobs per Redis round trip.

RQ's own success path costs several round trips per job (a WATCH on the
job's dependents, then a MULTI/EXEC) plus, here, metrics and the done
message. For tiny decodes that is most of a job's cost. The encode threads
hand each stored job to one committer thread instead, which takes whatever
has piled up and ends it all in one atomic call of the job lifecycle
(``lifecycle.end_jobs``): RQ's records, metrics, the latent's deletion and
the wake-up messages, each job fenced by its lease. A job this worker lost
(frozen past its lease, re-queued and run elsewhere) is discarded, not
finished twice.

Redis may be unreachable for a while (a restart, a failover): a commit is
retried with backoff for as long as the jobs' leases could still hold, then
left to recovery, which re-queues them once their leases lapse.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis import Redis

from ..core.request import JobInfo, JobResult
from ..state.fence import capture, captured
from ..state.lifecycle import Ending
from .work_item import WorkItem

__all__ = ["CommitHost", "Committer", "Completed"]

log = logging.getLogger("latentq.worker")

MAX_COMMIT = 256  # jobs per transaction: bounds one MULTI/EXEC's size under a flood of tiny jobs


@dataclass
class Completed:
    """A job whose outputs are stored: what the committer needs to mark it finished."""

    work: WorkItem  # the job, its queue, its execution and the lease it is fenced by
    result: JobResult  # RQ's return value, as JSON (``to_dict``)
    info: JobInfo  # the status it reports once finished, as written to the store (without URLs)
    timings: dict[str, float] = field(default_factory=dict)


class CommitHost(Protocol):
    """What the committer uses: a connection (the decode counters are written into a captured pipeline),
    the decode counters that ride along with each commit, the jobs' ending (``lifecycle.end_jobs`` on the
    worker's behalf) and where each job goes once committed, refused (lost) or left to recovery."""

    connection: Redis

    def write_decode_metrics(self, pipe: Any) -> None: ...

    def end_jobs(self, endings: list[Ending], extra: list[tuple[Any, ...]]) -> list[bool]: ...

    def committed(self, done: Completed) -> None: ...

    def commit_refused(self, done: Completed) -> None: ...

    def commit_failed(self, items: list[Completed]) -> None: ...


class Committer:
    """Commits finished jobs in batches; the host's ``committed`` (or ``commit_refused``) runs once for each.

    Threaded (a GPU worker, whose encoder threads finish jobs while the next batch decodes):
    one thread takes whatever has piled up. In line (a CPU worker, which finishes its jobs
    in the decoding thread): jobs gather until ``flush()``, called once per batch, so no
    thread competes with the decode for the cores.
    """

    def __init__(self, host: CommitHost, retry_for_s: float = 15.0, *, threaded: bool = True) -> None:
        self.host = host
        self.retry_for_s = retry_for_s
        self._queue: queue.Queue[Completed | None] = queue.Queue()
        self._gathered: list[Completed] = []
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="latentq-commit", daemon=True)
            self._thread.start()

    def submit(self, item: Completed) -> None:
        if self._thread is None:
            self._gathered.append(item)
        else:
            self._queue.put(item)

    def flush(self) -> None:
        """In line: commit what gathered since the last flush (threaded: nothing to do)."""
        while self._gathered:
            items, self._gathered = self._gathered[:MAX_COMMIT], self._gathered[MAX_COMMIT:]
            self._commit_with_retries(items)

    def close(self, timeout: float = 60.0) -> None:
        """Commit everything submitted so far, then stop."""
        self.flush()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            items = [] if first is None else [first]
            stopping = first is None
            while len(items) < MAX_COMMIT:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                items.append(more)
            if items:
                self._commit_with_retries(items)
            if stopping:
                return

    def _commit_with_retries(self, items: list[Completed]) -> None:
        host = self.host
        deadline = time.monotonic() + self.retry_for_s
        delay = 0.05
        # The decode counters gathered since the last commit ride along (taken once: retries resend them).
        decode_metrics = capture(host.connection)
        host.write_decode_metrics(decode_metrics)
        extra = captured(decode_metrics)
        while True:
            try:
                committed = self._commit(items, extra)
                break
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    log.error("could not mark %d finished jobs finished (%s); recovery will re-run them",
                              len(items), exc)  # fmt: skip
                    host.commit_failed(items)
                    return
                log.warning("marking %d jobs finished failed (%s); retrying in %.2f s", len(items), exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        for item, done in zip(items, committed):
            try:
                (host.committed if done else host.commit_refused)(item)
            except Exception:
                log.exception("after-commit step of job %s failed", item.work.id)

    def _commit(self, items: list[Completed], extra: list[tuple[Any, ...]]) -> list[bool]:
        endings = [Ending(item.work.job, "finished", item.work.queue, item.work.execution, item.work.token,
                          result=item.result.to_dict(), ended=item.work.job.ended_at, timings=item.timings)
                   for item in items]  # fmt: skip
        return self.host.end_jobs(endings, extra)
