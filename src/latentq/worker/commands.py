"""The worker's RQ command channel (``rq.command.send_shutdown_command`` and friends), on a thread latentq owns.

RQ listens with ``PubSub.run_in_thread(sleep_time=60)`` and stops that thread with a join whose length is
redis-py's business: from redis-py 8.2 ``get_message`` waits its whole timeout once nothing is subscribed,
so a worker's stop took 60 s. Here the listener polls in short steps of its own and its stop is bounded by
``STOP_WAIT_S``, whatever the library does; the thread closes its own connection (never another thread,
which could cut a read in half).

Commands that arrive before ``accept()`` are held: RQ subscribes before it installs its signal handlers, and
its shutdown command is a SIGINT to the process, which in that window killed the worker with a traceback.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["POLL_S", "STOP_WAIT_S", "CommandChannel"]

log = logging.getLogger("latentq.worker")

POLL_S = 0.2  # the longest a stop waits for the listener's read to come back
STOP_WAIT_S = 1.0  # a stop never waits longer than this for the thread (it is a daemon: left behind, it dies with us)
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 2.0


class CommandChannel:
    """Subscribes to one channel and hands each message to ``handler`` until ``stop``; survives Redis outages."""

    def __init__(self, connection: Redis, channel: str, handler: Callable[[dict[str, Any]], None]) -> None:
        self._connection = connection
        self.channel = channel
        self._handler = handler
        self._stop = threading.Event()
        self.subscribed = threading.Event()  # set while a subscription is confirmed (tests wait on it)
        self._accepting = threading.Event()
        self._held: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, name="latentq-commands", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def accept(self) -> None:
        """From now on commands are handled (those held so far, on the listener's next poll)."""
        self._accepting.set()

    def stop(self) -> bool:
        """Stop listening; True when the thread ended within ``STOP_WAIT_S`` (it always should: one poll)."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(STOP_WAIT_S)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        delay = RECONNECT_MIN_S
        while not self._stop.is_set():
            try:
                self._listen()
                delay = RECONNECT_MIN_S
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("command channel: Redis unreachable (%s); retrying in %.1f s", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)

    def _handle(self, message: dict[str, Any]) -> None:
        try:
            self._handler(message)
        except Exception:  # a malformed command never ends the listener
            log.exception("command channel: could not handle %r", message.get("data"))

    def _listen(self) -> None:
        pubsub = self._connection.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel)
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=POLL_S)
                if pubsub.subscribed:
                    self.subscribed.set()
                if message is not None and message.get("type") == "message":
                    self._held.append(message)
                if self._accepting.is_set():
                    while self._held:
                        self._handle(self._held.pop(0))
        finally:
            self.subscribed.clear()
            try:
                pubsub.close()
            except (RedisConnectionError, RedisTimeoutError, OSError):
                pass
