"""A whole latentq deployment on one machine: Redis, N workers, the API.

Used by ``latentq up`` and ``latentq demo``. With no Redis URL configured it
starts an embedded Redis server and stops it on exit. It supervises its
workers: one that exits (a crash, an out-of-memory kill) is started again.

It describes itself: the API's URL and the store go into Redis before the workers start (see
``latentq.state.deployment``), and with ``state_file`` (``latentq up``) it writes where it is to
``config.up_state_path()`` (Redis URL, API URL, store, pid), removed when it stops, so that the other
commands and ``Client()`` on this machine find it without flags.

Its children do not get the terminal's Ctrl-C: ``stop`` ends them in order
(workers, then the API, then Redis), so a worker finishes its batch while
Redis is still there to take the results.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import uvicorn
from redis import Redis
from rq import Queue, Worker

from ..config import Settings, child_environment, redis_url_from_env, set_overrides, up_state_path
from ..state import keys
from ..state.connection import REDIS_DOWN, redis_from_url
from ..state.deployment import Deployment
from .redis_server import EmbeddedRedis, free_port

__all__ = ["Stack", "StackOptions", "stop_processes", "wait_for_workers", "worker_command"]

log = logging.getLogger("latentq.stack")


@dataclass
class StackOptions:
    models: list[str] = field(default_factory=lambda: ["taef2"])
    workers: int = 1
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    max_batch: int | None = None  # None: the worker's default for its device
    max_wait_ms: float = 5.0
    heartbeat_interval: float = 5.0
    torch_threads: int | None = None  # each worker's torch threads; None: torch's default (one per core)
    redis_url: str | None = None
    log_level: str = "warning"
    store: str | None = None  # None: $LATENTQ_STORE, else default_store; made absolute either way
    default_store: str = "latentq-results"
    state_file: bool = False  # write up_state_path() while up (`latentq up`; not the demo)
    worker_flags: tuple[str, ...] = ()  # more `latentq worker` flags (--compile, --channels-last)


def worker_command(models: Sequence[str], *, device: str = "cpu", max_batch: int | None = None,
                   max_wait_ms: float | None = None, heartbeat_interval: float | None = None,
                   torch_threads: int | None = None, dtype: str | None = None, name: str | None = None,
                   log_level: str | None = None, extra: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """``python -m latentq worker ...``: how ``latentq up``, the tests and the benchmarks all start a worker.

    An option left at None is left to the worker's own default (e.g. ``--max-batch`` per device).
    """
    args = [sys.executable, "-m", "latentq"]
    if log_level:
        args += ["--log-level", log_level.upper()]
    args += ["worker", "--device", device]
    for flag, value in (("--max-batch", max_batch), ("--max-wait-ms", max_wait_ms),
                        ("--heartbeat-interval", heartbeat_interval), ("--torch-threads", torch_threads),
                        ("--dtype", dtype), ("--name", name)):  # fmt: skip
        if value is not None:
            args += [flag, str(value)]
    for model in models:
        args += ["--model", model]
    return args + list(extra)


def wait_for_workers(connection: Redis, model: str, count: int, timeout: float,
                     check: Callable[[], None] | None = None, *, name: str | None = None) -> float:
    """Until ``count`` live workers serve ``model`` (with ``name``: until that worker is registered);
    a Redis blink meanwhile is waited out, ``check`` raises. Returns the seconds waited."""
    queue = Queue(keys.queue_name(model), connection=connection)
    started = time.monotonic()
    while True:
        if check is not None:
            check()
        try:
            workers = Worker.all(connection=connection, queue=queue) if name else None
            if (name and any(worker.name == name for worker in workers or ())) or (
                not name and Worker.count(connection=connection, queue=queue) >= count
            ):
                return time.monotonic() - started
        except REDIS_DOWN:
            pass
        if time.monotonic() - started > timeout:
            what = f"worker {name}" if name else f"{count} worker(s)"
            raise TimeoutError(f"{what} for {model} did not start within {timeout} s")
        time.sleep(0.05)


def stop_processes(processes: Iterable[subprocess.Popen], timeout: float = 30.0) -> None:
    """SIGTERM them all at once (a worker's warm shutdown finishes its batch), SIGKILL what outlives ``timeout``."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        try:
            process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _start_without_sigint(redis: EmbeddedRedis) -> None:
    """Start ``redis`` with SIGINT blocked, so the terminal's Ctrl-C does not stop it before the workers.

    The child inherits this thread's signal mask and redis-server keeps it (it would handle
    SIGINT as SIGTERM); ``EmbeddedRedis.stop`` still ends it with SIGTERM.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        redis.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a Ctrl-C meanwhile is delivered now


class Stack:
    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.redis: EmbeddedRedis | None = None
        self.redis_url = options.redis_url or redis_url_from_env()
        self.workers: list[subprocess.Popen] = []
        self.restarts = 0  # workers started again after they exited
        self.server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._worker_args: list[str] = []
        self._env: dict[str, str] = {}
        self._stopping = threading.Event()
        self._started = threading.Event()  # every worker registered once: from then on, all exits are restarted
        self._supervisor: threading.Thread | None = None

    @property
    def api_url(self) -> str:
        return f"http://{self.options.host}:{self.options.port}"

    def start(self, worker_timeout: float = 120.0) -> Stack:
        opts = self.options
        if not self.redis_url:
            self.redis = EmbeddedRedis()  # assigned first: stop() ends it even if start is interrupted
            _start_without_sigint(self.redis)
            self.redis_url = self.redis.url
            log.info("started embedded Redis at %s", self.redis_url)
        if opts.port == 0:
            opts.port = free_port()
        # One absolute store for every process, whatever its working directory.
        set_overrides(redis_url=self.redis_url)  # the workers and this process's API and Client use these
        configured = Settings.from_env(redis_url=self.redis_url)
        store = opts.store or configured.store or opts.default_store
        if "://" not in store:
            store = os.path.abspath(os.path.expanduser(store))
        opts.store = store
        set_overrides(store=store)
        settings = Settings.from_env(redis_url=self.redis_url, public_url=configured.public_url or self.api_url)
        # Published before the workers start: their first webhooks already carry the API's URLs.
        connection = redis_from_url(self.redis_url)
        try:
            deployment = Deployment(connection, settings)
            deployment.publish_public_url(str(settings.public_url))
            deployment.publish_store(deployment.open_store())
        finally:
            connection.close()
        self._env = child_environment()
        args = worker_command(opts.models, device=opts.device, max_batch=opts.max_batch, max_wait_ms=opts.max_wait_ms,
                              heartbeat_interval=opts.heartbeat_interval, torch_threads=opts.torch_threads,
                              log_level=opts.log_level, extra=opts.worker_flags)  # fmt: skip
        self._worker_args = args
        for _ in range(opts.workers):
            self.workers.append(self._spawn_worker())
        from ..api import create_app  # FastAPI and the API only where this stack serves it in-process

        app = create_app(settings)
        config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level=opts.log_level)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="latentq-api", daemon=True)
        self._thread.start()
        connection = redis_from_url(self.redis_url)
        try:
            deadline = time.monotonic() + 30
            while not self.server.started:
                if time.monotonic() > deadline or not self._thread.is_alive():
                    raise RuntimeError(f"the API did not start on {self.api_url}")
                time.sleep(0.05)
            # Supervised from the start: a worker killed while the others load is started again.
            self._supervisor = threading.Thread(target=self._supervise, name="latentq-supervisor", daemon=True)
            self._supervisor.start()
            for model in opts.models:
                wait_for_workers(connection, model, opts.workers, worker_timeout, check=self._check_workers)
        finally:
            connection.close()
        self._started.set()
        if opts.state_file:
            self._write_state(str(settings.public_url))
        return self

    def _write_state(self, public_url: str) -> None:
        path = up_state_path()
        state = {"pid": os.getpid(), "redis_url": self.redis_url, "api_url": public_url, "store": self.options.store,
                 "started_at": time.time()}  # fmt: skip
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            temp = path.with_name(f".{path.name}.{os.getpid()}")
            temp.write_text(json.dumps(state))
            os.replace(temp, path)  # readers see the old file or the new one, never half of one
        except OSError as exc:
            log.warning("could not write %s (other commands will need --redis-url): %s", path, exc)

    def _remove_state(self) -> None:
        """Only our own: another `latentq up` started since owns the file now."""
        path = up_state_path()
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass

    def _supervise(self, interval: float = 0.5) -> None:
        """Start a worker again when it exits; its jobs were already re-queued through their leases.

        A worker that failed by itself before the stack came up (a bad model, a bad flag) is left for
        ``start`` to report: starting it again would only fail again.
        """
        while not self._stopping.wait(interval):
            for index, process in enumerate(self.workers):
                if process.poll() is None or self._stopping.is_set():
                    continue
                if process.returncode > 0 and not self._started.is_set():
                    continue
                log.warning("worker (pid %d) exited with code %s; starting another", process.pid, process.returncode)
                self.workers[index] = self._spawn_worker()
                self.restarts += 1

    def _spawn_worker(self) -> subprocess.Popen:
        # A session of its own: the terminal's Ctrl-C reaches only `latentq up`, whose stop() ends the worker.
        return subprocess.Popen(self._worker_args, env=self._env, start_new_session=True)

    def _check_workers(self) -> None:
        """A worker that exited with an error of its own while starting (killed ones are started again)."""
        for process in self.workers:
            if process.poll() is not None and process.returncode > 0:
                raise RuntimeError(f"a worker exited with code {process.returncode} (see its log above)")

    def stop(self) -> None:
        if self.options.state_file:
            self._remove_state()
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
        stop_processes(self.workers, 30)  # warm shutdown: each finishes its current batch
        self.workers.clear()
        if self.server is not None:
            self.server.should_exit = True
            if self._thread is not None:
                self._thread.join(10)
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
