"""The webhook outbox: deliveries kept in Redis until made, whoever ended the job and whatever became of it.

Writing: when a job with a ``callback_url`` ends (finished, failed, canceled,
expired), the job lifecycle adds one entry to a Redis stream in the same
fenced transaction that ends the job (``add``), so the job's end and its
webhook happen together, once. The entry holds the final body (made once:
every retry sends the same bytes) and the event's ``webhook-id``.

Draining: every worker and API process runs a ``Drainer`` thread, a consumer
of one consumer group on the stream. Redis, not a process, keeps each
delivery's state: a sorted set says when each entry is next due, a hash
counts its attempts. A drainer

- reads new entries (XREADGROUP) and schedules them now;
- takes due entries in one script that also pushes each one's due time a
  lease ahead and counts the attempt, so no two drainers attempt one entry at
  once, and an attempt whose drainer died is taken again once its lease ends;
- on success, or after the last attempt, acknowledges and deletes the entry
  (XACK + XDEL) and counts the outcome in the model's metrics; else schedules
  the next attempt after an exponential backoff;
- now and then claims (XAUTOCLAIM) entries that sat in a dead consumer's
  pending list without a schedule (it died between reading and scheduling).

A receiver may see an event more than once (an answer lost after it was
handled, a drainer that died mid-attempt): ``webhook-id`` is the same on every
delivery of one event, for deduplication. The stream is capped (``MAX_ENTRIES``,
approximately): a backlog beyond it loses its oldest deliveries.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import ResponseError

from ..config import Settings
from ..state import keys
from ..state.connection import REDIS_DOWN
from ..state.fence import run_script
from ..state.outbox import MAX_ENTRIES, add, event_data, pending
from .sender import WebhookSender

__all__ = ["MAX_ENTRIES", "Drainer", "add", "event_data", "pending"]

log = logging.getLogger("latentq.webhooks")

MAX_BACKOFF_S = 3600.0
RECLAIM_EVERY_S = 15.0
STOP_READ_WAIT_S = 0.25  # how long stop() waits for the reading loop (a daemon thread) before leaving it
RECLAIM_IDLE_MS = 60_000  # a pending entry this long untouched may have lost its schedule
CONSUMER_IDLE_MS = 3_600_000  # a consumer with nothing pending, unheard of this long, is removed
READ_COUNT = 100
REDIS_RETRY_MAX_S = 5.0
MAX_ERROR_WAIT_S = 60.0


# --- draining -------------------------------------------------------------------------------------------
_TAKE = """
-- Take due outbox entries: each one's due time pushed a lease ahead and its attempt counted.
-- KEYS[1] = when each entry is next due (sorted set latentq:webhooks:due)
-- KEYS[2] = attempts made per entry (hash latentq:webhooks:attempts)
-- KEYS[3] = the outbox (stream latentq:webhooks)
-- ARGV[1] = now (ms since the epoch)
-- ARGV[2] = an attempt's lease (ms)
-- ARGV[3] = the most entries to take
-- Returns {id, attempt, fields} per entry taken (an entry gone from the stream is dropped from KEYS[1], KEYS[2]).
local now = tonumber(ARGV[1])
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))) do
  local entry = redis.call('XRANGE', KEYS[3], id, id)
  if #entry == 0 then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
  else
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    out[#out + 1] = {id, redis.call('HINCRBY', KEYS[2], id, 1), entry[1][2]}
  end
end
return out
"""


@dataclass(frozen=True)
class Entry:
    """One outbox entry taken for an attempt."""

    entry_id: str
    attempt: int
    msg_id: str
    url: str
    model: str
    job_id: str
    body: bytes

    @classmethod
    def from_reply(cls, reply: list[Any]) -> Entry:
        entry_id, attempt, flat = reply
        fields = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
        text = {k: v.decode() for k, v in fields.items() if k != "body"}
        return cls(entry_id.decode(), int(attempt), text.get("id", ""), text.get("url", ""), text.get("model", ""),
                   text.get("job", ""), fields.get("body", b""))  # fmt: skip


def _now_ms() -> int:
    return int(time.time() * 1000)


class Drainer:
    """Delivers the outbox's entries from a thread (and up to ``concurrency`` delivery threads).

    ``start()`` once; ``stop()`` lets attempts in flight end and leaves the rest in Redis for others.
    """

    def __init__(self, connection: Redis, *, sender: WebhookSender | None = None, attempts: int = 8,
                 backoff_s: float = 1.0, timeout_s: float = 10.0, concurrency: int = 4,
                 consumer: str | None = None) -> None:  # fmt: skip
        self.connection = connection
        self.sender = sender or WebhookSender(timeout_s=timeout_s)
        self.attempts = max(1, attempts)
        self.backoff_s = max(0.0, backoff_s)
        # An attempt's drainer is presumed dead once its lease ends (every address tried, with margin).
        self.lease_ms = int(max(5.0, 3 * timeout_s) * 1000)
        self.concurrency = max(1, concurrency)
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._slots = threading.Condition()
        self._in_flight = 0
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="latentq-webhook")
        self._thread = threading.Thread(target=self._run, name="latentq-outbox", daemon=True)
        self._group_ready = False
        self._last_reclaim = 0.0

    @classmethod
    def from_settings(cls, connection: Redis, settings: Settings, **options: Any) -> Drainer:
        sender = WebhookSender(settings.webhook_secret, timeout_s=settings.webhook_timeout, allow=settings.webhook_allow)
        return cls(connection, sender=sender, attempts=settings.webhook_attempts, backoff_s=settings.webhook_backoff,
                   timeout_s=settings.webhook_timeout, **options)  # fmt: skip

    def start(self) -> Drainer:
        self._thread.start()
        return self

    def stop(self, timeout: float = STOP_READ_WAIT_S) -> None:
        """Attempts in flight end (each within the sender's timeout); the reading loop is not waited for past
        ``timeout``: it may sit in a blocking read (up to 1 s), and what it reads then is only scheduled in
        Redis (``_read_new``), for any drainer to deliver. A worker's stop stays quick."""
        self._stop.set()
        with self._slots:
            self._slots.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._pool.shutdown(wait=True)
        self.sender.close()

    def backoff(self, attempt: int) -> float:
        """Seconds before the attempt after ``attempt``: backoff, doubling, capped."""
        return min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1))

    # --- the loop ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        delay, down = 0.1, False
        while not self._stop.is_set():
            try:
                if not self._group_ready:
                    self._ensure_group()
                self._cycle()
                if down:
                    log.info("webhook outbox: Redis answers again; deliveries resume")
                down, delay = False, 0.1
            except Exception as exc:
                if self._stop.is_set():  # stopped mid-call (a read in flight): whatever failed, nothing to say
                    return
                if isinstance(exc, REDIS_DOWN):
                    if not down:  # one line per outage, not one per retry
                        log.warning("webhook outbox: Redis is unreachable (%s); deliveries wait for it", exc)
                        down, delay = True, 0.1
                    self._stop.wait(delay)
                    delay = min(delay * 2, REDIS_RETRY_MAX_S)
                    continue
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):  # a Redis that lost its data
                    self._group_ready = False
                    continue
                delay = max(delay, 1.0)
                if isinstance(exc, ResponseError):
                    log.error("webhook outbox: %s; retrying in %.0f s", exc, delay)
                else:  # a bug: said with its traceback, at a slowing pace
                    log.exception("webhook outbox: unexpected error; retrying in %.0f s", delay)
                self._stop.wait(delay)
                delay = min(delay * 2, MAX_ERROR_WAIT_S)

    def _ensure_group(self) -> None:
        try:  # from the stream's start: entries added before any drainer ran are delivered too
            self.connection.xgroup_create(keys.WEBHOOK_OUTBOX, keys.WEBHOOK_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _cycle(self) -> None:
        if time.monotonic() - self._last_reclaim > RECLAIM_EVERY_S:
            self._reclaim()
            self._last_reclaim = time.monotonic()
        free = self._free_slots(wait_s=1.0)
        if not free:
            return
        if self._stop.is_set():  # stopping: take nothing more (the pool no longer accepts attempts)
            return
        taken = self._take(free)
        for entry in taken:
            with self._slots:
                self._in_flight += 1
            try:
                self._pool.submit(self._attempt, entry)
            except RuntimeError:  # stop() shut the pool while this loop took them: their leases run out, and
                return  # another drainer (or this one's next start) attempts them then
        if len(taken) == free:
            return  # perhaps more are due: take again once a slot frees
        self._read_new(self._wait_ms())

    def _free_slots(self, wait_s: float) -> int:
        with self._slots:
            if self._in_flight >= self.concurrency:
                self._slots.wait(wait_s)
            return max(0, self.concurrency - self._in_flight) if not self._stop.is_set() else 0

    def _take(self, count: int) -> list[Entry]:
        keys_ = (keys.WEBHOOK_DUE, keys.WEBHOOK_ATTEMPTS, keys.WEBHOOK_OUTBOX)
        replies = run_script(self.connection, _TAKE, len(keys_), *keys_, _now_ms(), self.lease_ms, count)
        return [Entry.from_reply(reply) for reply in replies]

    def _wait_ms(self) -> int:
        """How long to wait for new entries: until the next due one, within [10 ms, 1 s]."""
        head = self.connection.zrange(keys.WEBHOOK_DUE, 0, 0, withscores=True)
        if not head:
            return 1000
        return int(min(1000, max(10, head[0][1] - _now_ms())))

    def _read_new(self, block_ms: int) -> None:
        replies = self.connection.xreadgroup(keys.WEBHOOK_GROUP, self.consumer, {keys.WEBHOOK_OUTBOX: ">"},
                                             count=READ_COUNT, block=block_ms)  # fmt: skip
        ids = [entry_id for _stream, entries in replies or [] for entry_id, _fields in entries]
        if ids:
            self._schedule_now(ids)

    def _schedule_now(self, ids: list[Any]) -> None:
        # NX: an entry already scheduled (a retry's time, an attempt's lease) keeps its time.
        self.connection.zadd(keys.WEBHOOK_DUE, {entry_id: _now_ms() for entry_id in ids}, nx=True)

    def _reclaim(self) -> None:
        """Adopt pending entries left unscheduled by a consumer that died; drop consumers long gone."""
        start = "0-0"
        for _ in range(100):  # bounded: 10,000 entries per round
            next_id, claimed, deleted = self.connection.xautoclaim(
                keys.WEBHOOK_OUTBOX, keys.WEBHOOK_GROUP, self.consumer, RECLAIM_IDLE_MS, start, count=READ_COUNT)
            if claimed:
                self._schedule_now([entry_id for entry_id, _fields in claimed])
            if deleted:  # trimmed by the stream's cap before delivery
                with self.connection.pipeline(transaction=True) as pipe:
                    pipe.xack(keys.WEBHOOK_OUTBOX, keys.WEBHOOK_GROUP, *deleted)
                    pipe.zrem(keys.WEBHOOK_DUE, *deleted)
                    pipe.hdel(keys.WEBHOOK_ATTEMPTS, *deleted)
                    pipe.execute()
            start = next_id.decode() if isinstance(next_id, bytes) else str(next_id)
            if start == "0-0":
                break
        for consumer in self.connection.xinfo_consumers(keys.WEBHOOK_OUTBOX, keys.WEBHOOK_GROUP):
            name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
            if name != self.consumer and not consumer["pending"] and consumer["idle"] > CONSUMER_IDLE_MS:
                self.connection.xgroup_delconsumer(keys.WEBHOOK_OUTBOX, keys.WEBHOOK_GROUP, name)

    # --- one attempt (a delivery thread) -----------------------------------------------------------------
    def _attempt(self, entry: Entry) -> None:
        try:
            outcome = self.sender.deliver(entry.url, entry.msg_id, entry.body)
            if outcome.delivered:
                self._settle(entry, "delivered")
            elif outcome.retry and entry.attempt < self.attempts:
                delay = self.backoff(entry.attempt)
                log.info("webhook %s to %s failed (%s), attempt %d; retrying in %.1f s", entry.msg_id, entry.url,
                         outcome.reason, entry.attempt, delay)  # fmt: skip
                self._with_redis(lambda: self.connection.zadd(keys.WEBHOOK_DUE, {entry.entry_id: _now_ms() + int(delay * 1000)},
                                                              xx=True))  # fmt: skip
            else:
                log.warning("webhook %s to %s given up after %d attempt(s): %s", entry.msg_id, entry.url,
                            entry.attempt, outcome.reason)  # fmt: skip
                self._settle(entry, "failed")
        except Exception:  # its lease lapses and another attempt follows
            log.exception("webhook %s: attempt %d broke", entry.msg_id, entry.attempt)
        finally:
            with self._slots:
                self._in_flight -= 1
                self._slots.notify_all()

    def _settle(self, entry: Entry, outcome: str) -> None:
        """The entry is done with (delivered, or given up): out of the stream, its state and schedule."""
        def write() -> None:
            with self.connection.pipeline(transaction=True) as pipe:
                pipe.xack(keys.WEBHOOK_OUTBOX, keys.WEBHOOK_GROUP, entry.entry_id)
                pipe.xdel(keys.WEBHOOK_OUTBOX, entry.entry_id)
                pipe.zrem(keys.WEBHOOK_DUE, entry.entry_id)
                pipe.hdel(keys.WEBHOOK_ATTEMPTS, entry.entry_id)
                if entry.model:
                    pipe.hincrby(keys.metrics_key(entry.model), f"webhooks_total:{outcome}", 1)
                pipe.execute()

        self._with_redis(write)

    def _with_redis(self, write: Callable[[], Any]) -> None:
        """Retry a bookkeeping write while Redis is away, within the attempt's lease (after it, the entry
        is attempted again: a duplicate the receiver drops by its webhook-id)."""
        deadline = time.monotonic() + self.lease_ms / 1000
        delay = 0.05
        while True:
            try:
                write()
                return
            except REDIS_DOWN:
                if time.monotonic() + delay > deadline or self._stop.wait(delay):
                    return
                delay = min(delay * 2, 1.0)
