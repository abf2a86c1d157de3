"""One listener per process for "job X ended": shared by every waiting thread and long-poll.

A worker (or the Client, for a cancel or an expiry) publishes on the job's done
channel when a job ends. Instead of one pub/sub connection per waiter (or per
thread), one background thread holds ONE pub/sub connection subscribed to the
pattern of all done channels, and calls the callbacks registered for that job.
Waiters register *before* they read the job's status, so no end is missed, and
re-check the status now and then anyway, which covers ends nobody published
(a TTL, a manual change) and messages lost while the connection was down.

A listener nobody has used for ``IDLE_S`` ends its thread and gives its
connection back (the next wait starts it again); a server keeps it (``start(keep=True)``).

When the connection drops, every waiter is woken (it re-checks: Redis down means
``Unavailable`` for it) and the listener reconnects with backoff; on reconnect it
wakes everyone again, since messages of the gap are gone.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from redis import Redis

from ..core.request import JobStatus
from ..state import keys
from ..state.connection import REDIS_DOWN
from ..state.status import STATUS_FROM_RQ

__all__ = ["RECHECK_S", "DoneListener", "has_ended"]

log = logging.getLogger(__name__)

RECHECK_S = 5.0  # a waiter re-reads the status this often even without a message
POLL_S = 1.0  # the listener thread looks at its stop flag this often
CONNECT_WAIT_S = 5.0  # how long the listener waits for its subscription's confirmation
IDLE_S = 30.0  # a listener nobody has used this long drops its connection (a producer that waited once)
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 2.0

Callback = Callable[[], None]


def has_ended(raw_status: bytes | None, deadline: float | None) -> bool:
    """Whether a job has ended, from the ``status`` field of its RQ hash (None: gone from Redis)."""
    if raw_status is None:
        return True  # gone from Redis: its stored record answers
    status = STATUS_FROM_RQ.get(raw_status.decode(), JobStatus.QUEUED)
    if status is JobStatus.QUEUED:  # past its deadline, reading its status expires it
        return deadline is not None and time.time() > deadline
    return status.is_final


_RUNNING: weakref.WeakSet[DoneListener] = weakref.WeakSet()


@atexit.register
def _stop_listeners() -> None:
    # A listener a program never closed must not outlive its interpreter's logging (nor retry into it).
    for listener in list(_RUNNING):
        listener.close()


class DoneListener:
    """A background thread with one pub/sub connection; ``watch(job_id, callback)`` while waiting.

    Callbacks run on the listener thread: they must only signal (set an Event,
    ``loop.call_soon_threadsafe``), never block.
    """

    def __init__(self, connection: Redis, *, idle_s: float | None = IDLE_S) -> None:
        self._connection = connection
        self._idle_s = idle_s
        self._callbacks: dict[str, set[Callback]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._failures = 0  # failed attempts since the last subscription
        self.connected = threading.Event()  # set while subscribed (tests and health read it)

    @contextmanager
    def watch(self, job_id: str, callback: Callback) -> Iterator[None]:
        """``callback()`` is called when the job's end is published, and on every reconnect."""
        with self._lock:  # one lock with the thread's retirement: a watch never lands on a retiring thread
            self._callbacks.setdefault(job_id, set()).add(callback)
            self._start_locked()
        try:
            yield
        finally:
            with self._lock:
                callbacks = self._callbacks.get(job_id)
                if callbacks is not None:
                    callbacks.discard(callback)
                    if not callbacks:
                        del self._callbacks[job_id]

    @property
    def waiting(self) -> int:
        """Jobs someone waits on now."""
        with self._lock:
            return len(self._callbacks)

    def start(self, *, keep: bool = False) -> None:
        """Subscribe now (the first watch does it otherwise); ``keep``: stay subscribed when idle (a server)."""
        with self._lock:
            if keep:
                self._idle_s = None
            self._start_locked()

    def _start_locked(self) -> None:
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="latentq-done-listener", daemon=True)
            self._thread.start()
            _RUNNING.add(self)

    def close(self) -> None:
        """Stop listening: the thread ends (and drops its connection) within ``POLL_S``; nobody waits for it."""
        self._stop.set()

    # --- the listener thread -------------------------------------------------------
    def _run(self) -> None:
        delay = BACKOFF_MIN_S
        while not self._stop.is_set():
            try:
                self._listen()
                return  # stopped, or retired when idle
            except Exception as exc:  # never let the one listener die: every waiter would fall back to re-checks
                if self._stop.is_set() or self._retired(since=0.0):
                    return  # (nobody waits: a producer's listener retires quietly; the next wait starts another)
                if self._failures == 0:  # reset by a subscription: a fresh outage starts the backoff over
                    delay = BACKOFF_MIN_S
                self._failures += 1
                # One line per outage, not one per retry.
                level = logging.WARNING if self._failures == 1 else logging.DEBUG
                log.log(level, "done listener: Redis unreachable (%s: %s); retrying in %.1f s",
                        type(exc).__name__, exc, delay, exc_info=not isinstance(exc, REDIS_DOWN))  # fmt: skip
            self._wake_all()  # they re-check now: Redis down is theirs to report
            self._stop.wait(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
            if self._retired(since=0.0):  # nobody waits any more: no need to keep trying
                return

    def _listen(self) -> None:
        pubsub = self._connection.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.psubscribe(keys.JOB_DONE_PATTERN)
            pubsub.get_message(timeout=CONNECT_WAIT_S)  # the subscription's confirmation: subscribed from here on
            self.connected.set()
            if self._failures:
                log.info("done listener: subscribed again after %d failed attempts", self._failures)
                self._failures = 0
            self._wake_all()  # ends published while we were not subscribed are only seen by a re-check
            prefix = keys.JOB_DONE_PATTERN.rstrip("*")
            busy = time.monotonic()
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=POLL_S)
                if self.waiting:
                    busy = time.monotonic()
                elif self._retired(since=busy):
                    return
                if message is None or message.get("type") != "pmessage":
                    continue
                channel = message["channel"]
                channel = channel.decode() if isinstance(channel, bytes) else channel
                self._wake(channel[len(prefix) :])
        finally:
            self.connected.clear()
            try:
                pubsub.close()  # its connection goes back to the pool
            except (*REDIS_DOWN, OSError):  # already broken: nothing to say goodbye to
                pass

    def _retired(self, since: float) -> bool:
        """End this thread when nobody has waited for ``idle_s``; the next watch starts another."""
        with self._lock:
            if self._callbacks or self._idle_s is None or time.monotonic() - since < self._idle_s:
                return False
            self._thread = None
            return True

    def _wake(self, job_id: str) -> None:
        with self._lock:
            callbacks = list(self._callbacks.get(job_id, ()))
        for callback in callbacks:
            callback()

    def _wake_all(self) -> None:
        with self._lock:
            callbacks = [cb for group in self._callbacks.values() for cb in group]
        for callback in callbacks:
            callback()
