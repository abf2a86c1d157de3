"""The ``latentq`` command: up, worker, api, submit, status, cleanup, demo, keys."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ..logs import configure_logging
from .submit import cmd_submit
from .worker import add_gpu_options, cmd_worker

__all__ = ["main"]

DEFAULT_DEMO_IMAGES = "../shared/images"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _add_redis(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="Redis URL (default: $LATENTQ_REDIS_URL, else the running `latentq up` "
                                            "on this machine, else redis://127.0.0.1:6379/0)")


def _add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", help="result store: a directory or s3://bucket/prefix (default: $LATENTQ_STORE, "
                                        "else the deployment's, published in Redis, else ./latentq-results)")


def _apply_flags(args: argparse.Namespace) -> None:
    # Flags win over the environment, here and in the processes this one starts (config.set_overrides).
    from ..config import set_overrides

    set_overrides(redis_url=getattr(args, "redis_url", None), store=getattr(args, "store", None),
                  models_file=getattr(args, "models_file", None))  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentq", description="Queued, batched VAE decoding for latent diffusion models.")
    parser.add_argument("--models-file", help="TOML models file (default: $LATENTQ_MODELS)")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                        help="logging level (default INFO; DEBUG adds one line per HTTP request)")
    parser.add_argument("--log-json", action="store_true", help="JSON log lines (also $LATENTQ_LOG_JSON=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="Redis (embedded unless configured), workers and the API, in one command")
    up.add_argument("--model", action="append", dest="models", help="model to serve (repeat; default taef2)")
    up.add_argument("--workers", type=_positive_int, default=1, help="worker processes (default 1)")
    up.add_argument("--torch-threads", type=_positive_int,
                    help="each worker's torch threads (default: cores / workers, at least 1)")
    up.add_argument("--host", default="127.0.0.1", help="API address to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="API port (default 8000; 0: a free one)")
    up.add_argument("--device", default="cpu",
                    help="cpu, cuda, cuda:N, or cuda:all (--workers worker processes on each visible GPU)")
    up.add_argument("--max-batch", type=int, help="workers' --max-batch (default: the device's)")
    up.add_argument("--max-wait-ms", type=float, default=5.0,
                    help="workers' --max-wait-ms: how long a burst's batch may wait to fill (default 5)")
    up.add_argument("--heartbeat-interval", type=float, default=5.0,
                    help="workers' heartbeat (s); a dead or frozen worker's jobs are re-run after 3 of them")
    add_gpu_options(up)
    _add_redis(up)
    _add_store(up)

    worker = sub.add_parser("worker", help="a decode worker: loads its models once, batches jobs per model")
    worker.add_argument("--model", action="append", dest="models", help="model to serve (repeat; default taef2)")
    worker.add_argument("--device", default="cpu",
                        help="cpu, cuda, cuda:N, or cuda:all: one worker process per visible GPU, each with all the models")
    worker.add_argument("--model-memory-budget", metavar="SIZE",
                        help="memory the models may hold on the device, e.g. 20GiB or 800MiB: the least recently "
                             "used are evicted to load another, and reloaded on demand (default: no budget, "
                             "every model loaded once and kept)")  # fmt: skip
    worker.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="override the models' dtype")
    worker.add_argument("--max-batch", type=int,
                        help="most jobs in one decode call (default 8 on a GPU, 32 on a CPU)")  # fmt: skip
    worker.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="when more than one job waits, how long to wait for the batch to fill (default 5)")
    worker.add_argument("--max-batch-pixels", type=int,
                        help="output pixels (x frames) one decode call may hold; 0: no budget "
                             "(default 16M on a GPU; 32768 on a CPU, where only small images gain from batching)")  # fmt: skip
    worker.add_argument("--encode-threads", type=int, default=None,
                        help="threads encoding and storing results while the next batch decodes; 0: in line "
                             "(default on a GPU: half the cores, 4 to 16; 0 on a CPU, whose cores the decode already uses)")  # fmt: skip
    worker.add_argument("--torch-threads", type=_positive_int,
                        help="torch's intra-op threads (default: torch's, one per core); with several CPU "
                             "workers on one machine, cores / workers")  # fmt: skip
    worker.add_argument("--name", help="worker name (default: RQ's random name)")
    worker.add_argument("--heartbeat-interval", type=float, default=5.0,
                        help="seconds between heartbeats; a dead worker's jobs are re-queued after 3x this (default 5)")
    worker.add_argument("--no-previews", action="store_true", help="do not load the models' preview decoders")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    add_gpu_options(worker)
    _add_redis(worker)
    _add_store(worker)

    api = sub.add_parser("api", help="the HTTP API (FastAPI served by uvicorn)")
    api.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    _add_redis(api)
    _add_store(api)

    submit = sub.add_parser("submit", help="submit safetensors latent files")
    submit.add_argument("files", nargs="+", type=Path, help="safetensors files, one latent each (batches are split)")
    submit.add_argument("--model", required=True, help="model that decodes the latents, e.g. taef2")
    submit.add_argument("--output-format", default="png",
                        help="png, jpeg, webp, mp4, frames, tensor or uint8 (default png)")
    submit.add_argument("--api", help="submit over HTTP to this API URL instead of straight to Redis")
    submit.add_argument("--api-key", help="with --api: the API key (default: $LATENTQ_API_KEY)")
    submit.add_argument("--wait", action="store_true", help="wait for the results")
    submit.add_argument("--timeout", type=float, default=600.0, help="with --wait: seconds to wait (default 600)")
    submit.add_argument("--out", type=Path, help="with --wait: save results into this directory")
    _add_redis(submit)
    _add_store(submit)

    cleanup = sub.add_parser("cleanup", help="delete results older than the result TTL (S3: a lifecycle rule)")
    cleanup.add_argument("--older-than", type=float, help="seconds (default: $LATENTQ_RESULT_TTL, else 86400)")
    cleanup.add_argument("--sweep", action="store_true",
                         help="S3: also list and delete old objects now (lifecycle rules act about daily)")
    _add_store(cleanup)

    status = sub.add_parser("status", help="queues and workers at a glance, or one job's status")
    status.add_argument("job_id", nargs="?", help="one job's status as JSON (default: every queue and worker)")
    _add_redis(status)

    demo = sub.add_parser("demo", help="encode sample photos with TAEF2, decode them through the whole system")
    demo.add_argument("--images", type=Path, default=Path(DEFAULT_DEMO_IMAGES), help=f"default {DEFAULT_DEMO_IMAGES}")
    demo.add_argument("--out", type=Path, default=Path("demo-output"),
                      help="directory for the decoded images (default demo-output)")
    demo.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    demo.add_argument("--workers", type=_positive_int, default=1, help="worker processes (default 1)")
    demo.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    _add_redis(demo)
    _add_store(demo)

    from .keys import add_keys_parser  # torch-free, as every parser is

    add_keys_parser(sub, _add_redis)
    return parser


def public_url_for(host: str, port: int) -> str:
    """The API's URL for other processes: ``$LATENTQ_PUBLIC_URL``, else the address it listens on (a
    wildcard address named by this machine's host name)."""
    import socket

    from ..config import Settings

    configured = Settings.from_env().public_url
    if configured:
        return configured.rstrip("/")
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from ..api import create_app
    from ..config import Settings

    # Published in Redis at start: every process of the deployment makes its result URLs with it.
    settings = Settings.from_env(public_url=public_url_for(args.host, args.port))
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level.lower())
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from ..config import default_up_store
    from ..local.stack import Stack, StackOptions
    from .worker import expand_devices, gpu_flags

    expand_devices(args.device)  # cuda:all without a GPU fails here, before anything starts
    # Several CPU workers each running torch's one-thread-per-core would oversubscribe the cores.
    torch_threads = args.torch_threads or max(1, (os.cpu_count() or 1) // args.workers)
    options = StackOptions(
        models=args.models or ["taef2"], workers=args.workers, host=args.host, port=args.port,
        device=args.device, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        heartbeat_interval=args.heartbeat_interval, torch_threads=torch_threads, worker_flags=gpu_flags(args), log_level=args.log_level.lower(),
        store=args.store, default_store=default_up_store(), state_file=True,
    )  # fmt: skip
    stack = Stack(options)
    with _stop_signals():
        try:
            stack.start()
            print(f"latentq is up: API {stack.api_url} (docs at {stack.api_url}/docs), Redis {stack.redis_url}, "
                  f"results in {options.store}, {options.workers} worker(s) for {', '.join(options.models)}. "
                  "Ctrl-C stops.", flush=True)  # fmt: skip
            while True:
                time.sleep(3600)
        except _StopRequested:
            print("stopping...", flush=True)
        finally:
            stack.stop()  # workers (SIGTERM: they finish their batch), then the API, then Redis
    return 0


class _StopRequested(BaseException):
    """Raised in the main thread by the first Ctrl-C, SIGTERM or SIGHUP of ``latentq up``."""


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """The first stop signal interrupts start-up or the wait; later ones do not cut the orderly stop short."""
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise _StopRequested
        # os.write, not print: a handler that prints while the main thread prints raises RuntimeError.
        os.write(2, f"{signal.Signals(signum).name}: already stopping (the workers finish their batches)\n".encode())

    stops = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    previous = {signum: signal.signal(signum, on_signal) for signum in stops}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def cmd_cleanup(args: argparse.Namespace) -> int:
    # Imported here, not at the top: `latentq --help` stays light (no store, S3 or Redis modules, no torch).
    from .cleanup import cmd_cleanup as run

    return run(args)


def cmd_status(args: argparse.Namespace) -> int:
    # Imported here, not at the top: `latentq --help` stays light (no rq or producer modules, no torch).
    from .status import cmd_status as run

    return run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    rows = run_demo(args.images, args.out, device=args.device, workers=args.workers, port=args.port)
    return 0 if min(r.psnr for r in rows) >= 28.0 else 1


COMMANDS = {"up": cmd_up, "worker": cmd_worker, "api": cmd_api, "submit": cmd_submit, "status": cmd_status, "demo": cmd_demo,
            "cleanup": cmd_cleanup, "keys": lambda args: _cmd_keys(args)}


def _cmd_keys(args: argparse.Namespace) -> int:
    from .keys import cmd_keys

    return cmd_keys(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv  # `worker --device cuda:all` starts this command again, once per GPU
    from ..config import log_json_from_env

    configure_logging(args.log_level, json_lines=bool(args.log_json or log_json_from_env()))
    _apply_flags(args)
    from ..errors import LatentqError

    try:
        code = COMMANDS[args.command](args)
    except LatentqError as exc:
        print(f"latentq: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.command == "worker" and argv is None:  # this process is the worker (not a caller's main([...]))
        _exit_at_once(code)
    return code


def _exit_at_once(code: int) -> None:
    """End a worker process without the interpreter's teardown of torch and its models (0.6 s of a stop that
    Kubernetes or Ctrl-C wants quick). Its work is done by now: batches stored, jobs ended, Redis told,
    threads stopped; the logs and standard streams are flushed here."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
