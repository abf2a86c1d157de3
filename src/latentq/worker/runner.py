"""A worker process's life: serve until told to stop, whatever Redis does meanwhile.

RQ's work loop quits on any error it does not expect, a lost Redis
connection included. ``serve`` runs it again: it waits for Redis with
backoff, keeps the models loaded (they live outside the worker object) and
starts a fresh ``DecodeWorker`` (a new RQ worker registration). Jobs the old
one held end through their leases: committed if Redis came back in time,
else re-queued by recovery once their leases lapse. SIGTERM or SIGINT ends
it: during a batch RQ's warm shutdown finishes the batch first.

Beside the worker, the process drains the webhook outbox (``latentq.webhooks.outbox``)
for its whole life, across those restarts: deliveries of jobs that any
process ended, this one's included.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from redis import Redis

from ..state import rqstate

__all__ = ["serve", "wait_for_redis"]

log = logging.getLogger("latentq.worker")

MAX_BACKOFF_S = 5.0


def wait_for_redis(connection: Redis, stop: threading.Event, *, first_delay: float = 0.1) -> bool:
    """Ping until Redis answers (True) or ``stop`` is set (False), backing off up to MAX_BACKOFF_S."""
    delay = first_delay
    while not stop.is_set():
        try:
            connection.ping()
            return True
        except Exception as exc:
            log.warning("Redis is unreachable (%s); retrying in %.1f s", exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
    return False


def serve(make_worker: Callable[[], Any], connection: Redis, *, burst: bool = False,
          logging_level: str = "INFO", drainer: Any = None) -> int:  # fmt: skip
    """Run workers made by ``make_worker`` one after another until a stop signal (or a burst's end).

    ``drainer``: the webhook outbox's ``Drainer``, started now and stopped last.
    """
    if drainer is not None:
        drainer.start()
    try:
        return _serve(make_worker, connection, burst, logging_level)
    finally:
        if drainer is not None:
            drainer.stop()


def _serve(make_worker: Callable[[], Any], connection: Redis, burst: bool, logging_level: str) -> int:
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        stop.set()
        raise KeyboardInterrupt  # interrupts a backoff wait; RQ's own handlers replace this one while it works

    while not stop.is_set():
        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if not wait_for_redis(connection, stop):
                break
        except KeyboardInterrupt:
            break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        worker = make_worker()
        try:
            worker.work(burst=burst, logging_level=logging_level)
        except Exception as exc:  # its teardown could not reach Redis either
            log.warning("worker %s stopped: %s", worker.name, exc)
        if burst or rqstate.stop_requested(worker):
            break
        log.warning("worker %s lost Redis; starting again once it answers (models stay loaded)", worker.name)
        time.sleep(0.1)
    return 0
