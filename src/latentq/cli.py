"""The ``latentq`` command: up, worker, api, submit, status, demo."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

__all__ = ["main"]

DEFAULT_DEMO_IMAGES = "../shared/images"


def _add_redis(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="Redis URL (default: $LATENTQ_REDIS_URL, else redis://127.0.0.1:6379/0)")


def _add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", help="result store directory (default: $LATENTQ_STORE, else ./latentq-results)")


def _apply_env(args: argparse.Namespace) -> None:
    # Flags win over the environment; children (workers) inherit them.
    for flag, env in (("redis_url", "LATENTQ_REDIS_URL"), ("store", "LATENTQ_STORE"), ("models_file", "LATENTQ_MODELS")):
        value = getattr(args, flag, None)
        if value:
            os.environ[env] = str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentq", description="Queued, batched VAE decoding for latent diffusion models.")
    parser.add_argument("--models-file", help="TOML models file (default: $LATENTQ_MODELS)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="Redis (embedded unless configured), workers and the API, in one command")
    up.add_argument("--model", action="append", dest="models", help="model to serve (repeat; default taef2)")
    up.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    up.add_argument("--max-batch", type=int, default=8)
    up.add_argument("--max-wait-ms", type=float, default=5.0)
    _add_redis(up)
    _add_store(up)

    worker = sub.add_parser("worker", help="a decode worker: loads its models once, batches jobs per model")
    worker.add_argument("--model", action="append", dest="models", help="model to serve (repeat; default taef2)")
    worker.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    worker.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="override the models' dtype")
    worker.add_argument("--max-batch", type=int, default=8, help="most jobs in one decode call (default 8)")
    worker.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill (default 5)")
    worker.add_argument("--max-batch-pixels", type=int, default=16 * 1024 * 1024,
                        help="output pixels (x frames) one decode call may hold; 0: no budget (default 16M)")
    worker.add_argument("--encode-threads", type=int, default=4, help="threads encoding and storing results")
    worker.add_argument("--name", help="worker name (default: RQ's random name)")
    worker.add_argument("--no-previews", action="store_true", help="do not load the models' preview decoders")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    _add_redis(worker)
    _add_store(worker)

    api = sub.add_parser("api", help="the HTTP API (FastAPI served by uvicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    _add_redis(api)
    _add_store(api)

    submit = sub.add_parser("submit", help="submit safetensors latent files")
    submit.add_argument("files", nargs="+", type=Path, help="safetensors files, one latent each (batches are split)")
    submit.add_argument("--model", required=True)
    submit.add_argument("--output-format", default="png")
    submit.add_argument("--api", help="submit over HTTP to this API URL instead of straight to Redis")
    submit.add_argument("--wait", action="store_true", help="wait for the results")
    submit.add_argument("--timeout", type=float, default=600.0)
    submit.add_argument("--out", type=Path, help="with --wait: save results into this directory")
    _add_redis(submit)
    _add_store(submit)

    status = sub.add_parser("status", help="queues and workers at a glance, or one job's status")
    status.add_argument("job_id", nargs="?")
    _add_redis(status)

    demo = sub.add_parser("demo", help="encode sample photos with TAEF2, decode them through the whole system")
    demo.add_argument("--images", type=Path, default=Path(DEFAULT_DEMO_IMAGES), help=f"default {DEFAULT_DEMO_IMAGES}")
    demo.add_argument("--out", type=Path, default=Path("demo-output"))
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--workers", type=int, default=1)
    demo.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    _add_redis(demo)
    _add_store(demo)
    return parser


def cmd_worker(args: argparse.Namespace) -> int:
    from redis import Redis

    from .config import Settings
    from .models.loader import load_model
    from .models.registry import load_registry
    from .store import open_store
    from .worker import DecodeWorker

    settings = Settings.from_env()
    registry = load_registry(settings.models_file)
    log = logging.getLogger("latentq")
    models, previews = {}, {}
    for name in args.models or ["taef2"]:
        spec = registry.get(name)
        log.info("loading %s on %s from %s", name, args.device, spec.source or "config")
        models[name] = load_model(spec, args.device, args.dtype)
        if spec.preview and not args.no_previews:
            try:
                previews[name] = load_model(registry.get(spec.preview), args.device, args.dtype)
            except Exception as exc:  # previews are optional: serve full decodes without them
                log.warning("no preview decoder for %s: %s", name, exc)
    from .webhooks import WebhookSender

    webhooks = WebhookSender()
    if not webhooks.secret:
        log.warning("LATENTQ_WEBHOOK_SECRET is not set: webhooks are sent unsigned")
    worker = DecodeWorker(
        models,
        Redis.from_url(settings.redis_url),
        open_store(settings.store, public_url=settings.public_url),
        max_batch=args.max_batch,
        max_batch_pixels=args.max_batch_pixels or None,
        webhooks=webhooks,
        max_wait_ms=args.max_wait_ms,
        encode_threads=args.encode_threads,
        limits=settings.limits,
        name=args.name,
        previews=previews,
    )
    worker.work(burst=args.burst, logging_level=args.log_level)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from .api import create_app

    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level.lower())
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from .stack import Stack, StackOptions

    options = StackOptions(
        models=args.models or ["taef2"], workers=args.workers, host=args.host, port=args.port,
        device=args.device, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        log_level=args.log_level.lower(),
    )  # fmt: skip
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Stack(options) as stack:
        print(f"latentq is up: API {stack.api_url} (docs at {stack.api_url}/docs), Redis {stack.redis_url}, "
              f"{options.workers} worker(s) for {', '.join(options.models)}. Ctrl-C stops.", flush=True)  # fmt: skip
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        print("stopping...", flush=True)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from safetensors.torch import load_file
    from tqdm import tqdm

    from .producer import Client, HttpClient

    client = HttpClient(args.api) if args.api else Client()
    jobs = []
    for path in args.files:
        for name, tensor in load_file(str(path)).items():
            batch = tensor if tensor.ndim == 4 and tensor.shape[0] > 1 else tensor.reshape(1, *tensor.shape[-3:])
            for index, sample in enumerate(batch.unbind(0)):
                job = client.submit(sample, model=args.model, output_format=args.output_format)
                label = f"{path.stem}-{name}-{index}"
                jobs.append((label, job))
                print(f"{label}\t{job.id}")
    if not args.wait:
        return 0
    failed = 0
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    for label, job in tqdm(jobs, desc="decoding", unit="job", file=sys.stderr):
        try:
            results = job.wait(timeout=args.timeout)
        except Exception as exc:
            failed += 1
            tqdm.write(f"{label}\t{job.id}\tfailed: {exc}", file=sys.stderr)
            continue
        for index, result in enumerate(results):
            line = f"{label}\t{job.id}\t{result.url}"
            if args.out:
                ext = result.key.rsplit(".", 1)[-1]
                target = args.out / f"{label}.{index}.{ext}" if len(results) > 1 else args.out / f"{label}.{ext}"
                target.write_bytes(job.read(index))
                line += f"\t{target}"
            tqdm.write(line)
    return 1 if failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from rq import Worker

    from . import keys
    from .producer import Client

    client = Client()
    if args.job_id:
        print(json.dumps(client.job_info(args.job_id).to_dict(), indent=2))
        return 0
    print(f"{'model':<16} {'queued':>7} {'started':>8} {'finished':>9} {'failed':>7} {'workers':>8}")
    for name in client.registry.names():
        queue = client.queue(name)
        workers = Worker.count(connection=client.connection, queue=queue)
        print(f"{name:<16} {queue.count:>7} {queue.started_job_registry.count:>8} "
              f"{queue.finished_job_registry.count:>9} {queue.failed_job_registry.count:>7} {workers:>8}")  # fmt: skip
    for worker in Worker.all(connection=client.connection):
        models = [keys.model_from_queue(q) or q for q in worker.queue_names()]
        print(f"worker {worker.name}: {worker.get_state()}, models {', '.join(models)}, "
              f"{worker.successful_job_count} ok, {worker.failed_job_count} failed")  # fmt: skip
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    rows = run_demo(args.images, args.out, device=args.device, workers=args.workers, port=args.port)
    return 0 if min(r.psnr for r in rows) >= 28.0 else 1


COMMANDS = {"up": cmd_up, "worker": cmd_worker, "api": cmd_api, "submit": cmd_submit, "status": cmd_status, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _apply_env(args)
    from .errors import LatentqError

    try:
        return COMMANDS[args.command](args)
    except LatentqError as exc:
        print(f"latentq: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
