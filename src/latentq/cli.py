"""The ``latentq`` command: up, worker, api, submit, status, cleanup, demo, keys."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .logs import configure_logging

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
    from .config import set_overrides

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
    _add_gpu_options(up)
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
                             "(default 4 on a GPU, 0 on a CPU, whose cores the decode already uses)")  # fmt: skip
    worker.add_argument("--torch-threads", type=_positive_int,
                        help="torch's intra-op threads (default: torch's, one per core); with several CPU "
                             "workers on one machine, cores / workers")  # fmt: skip
    worker.add_argument("--name", help="worker name (default: RQ's random name)")
    worker.add_argument("--heartbeat-interval", type=float, default=5.0,
                        help="seconds between heartbeats; a dead worker's jobs are re-queued after 3x this (default 5)")
    worker.add_argument("--no-previews", action="store_true", help="do not load the models' preview decoders")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    _add_gpu_options(worker)
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

    from .cli_keys import add_keys_parser  # torch-free, as every parser is

    add_keys_parser(sub, _add_redis)
    return parser


def expand_devices(device: str) -> list[str]:
    """``--device``'s value -> the devices to run one worker process on each: ``cuda:all`` is every visible GPU."""
    if device != "cuda:all":
        return [device]
    import torch

    from .errors import ConfigError

    count = torch.cuda.device_count()
    if count < 1:
        raise ConfigError("--device cuda:all: no CUDA device is visible (torch.cuda.device_count() is 0); "
                          "use --device cpu, or check CUDA_VISIBLE_DEVICES and the driver")  # fmt: skip
    return [f"cuda:{index}" for index in range(count)]


def _with_device(argv: list[str], device: str, name: str | None) -> list[str]:
    """``argv`` of this command with ``--device`` (and ``--name``, when given) set for one device's worker."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--device", "--name"):
            skip = True
        elif not arg.startswith(("--device=", "--name=")):
            out.append(arg)
    out += ["--device", device]
    if name:
        out += ["--name", f"{name}-{device.replace(':', '')}"]
    return out


def _worker_per_device(args: argparse.Namespace, devices: list[str]) -> int:
    """``--device cuda:all``: one worker process per GPU; stop signals are passed on, the worst exit code returned."""
    import subprocess

    log = logging.getLogger("latentq")
    argv = args.argv if args.argv is not None else sys.argv[1:]
    children = [subprocess.Popen([sys.executable, "-m", "latentq", *_with_device(argv, device, args.name)])
                for device in devices]  # fmt: skip
    log.info("started %d workers, one per GPU (%s)", len(children), ", ".join(devices))

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        codes = [child.wait() for child in children]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return max(codes, key=abs)


def _add_gpu_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                        help="the decoders' 2-D convolutions in channels_last memory format (auto, the default: "
                             "on CUDA devices; never for 3-D video VAEs)")  # fmt: skip
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each model's decoder, compiled at start for the models file's "
                             "warmup_shapes; at most 8 latent shapes (or as many as declared) run compiled, "
                             "others eager (slower start; faster decodes on GPUs)")  # fmt: skip


def _gpu_options(args: argparse.Namespace) -> dict:
    """``--channels-last``/``--compile`` as load_model's keywords."""
    return {"channels_last": {"auto": None, "on": True, "off": False}[args.channels_last], "compile": args.compile}


def _gpu_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """``up``'s ``--channels-last``/``--compile``, as its workers' flags."""
    return ("--channels-last", args.channels_last) + (("--compile",) if args.compile else ())


def cmd_worker(args: argparse.Namespace) -> int:
    from .config import Settings
    from .connection import redis_from_url
    from .deployment import Deployment
    from .models.loader import load_model
    from .models.registry import load_registry
    from .worker import DecodeWorker
    from .worker.model_cache import ModelCache, parse_memory

    devices = expand_devices(args.device)
    if len(devices) > 1:
        return _worker_per_device(args, devices)
    device = devices[0]
    budget = parse_memory(args.model_memory_budget) if args.model_memory_budget else None
    settings = Settings.from_env()
    registry = load_registry(settings.models_file)
    log = logging.getLogger("latentq")
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    if device.startswith("cuda:"):
        import torch

        torch.cuda.set_device(torch.device(device))  # this process's GPU: its allocations and streams go there
    names = args.models or ["taef2"]
    specs = {name: registry.get(name) for name in names}

    def load(spec):
        log.info("loading %s on %s from %s", spec.name, device, spec.source or "config")
        return load_model(spec, device, args.dtype, **_gpu_options(args))

    models = ModelCache(specs, load, budget_bytes=budget, device=device)
    models.preload()  # every model loads once at start (a bad one fails here); over a budget the last ones stay
    previews = {}
    for name, spec in specs.items():
        if spec.preview and not args.no_previews:
            try:
                previews[name] = load_model(registry.get(spec.preview), device, args.dtype,
                                            channels_last=_gpu_options(args)["channels_last"])  # fmt: skip
            except Exception as exc:  # previews are optional: serve full decodes without them
                log.warning("no preview decoder for %s: %s", name, exc)
    from .outbox import Drainer
    from .worker.runner import serve

    connection = redis_from_url(settings.redis_url)
    # Its store setting (else the deployment's, else the default) becomes the deployment's; its webhooks'
    # result URLs are the deployment's (signed, through the API's public URL).
    deployment = Deployment(connection, settings)
    store = _published_store(deployment)

    starts = itertools.count()

    def make_worker() -> DecodeWorker:  # a fresh one after each Redis outage; the models stay loaded
        start = next(starts)  # a restarted worker needs a new name: the old one may still be registered
        return DecodeWorker(
            models,
            connection,
            store,
            max_batch=args.max_batch,
            max_batch_pixels=-1 if args.max_batch_pixels is None else (args.max_batch_pixels or None),
            max_wait_ms=args.max_wait_ms,
            encode_threads=args.encode_threads,
            limits=settings.limits,
            name=f"{args.name}.{start}" if args.name and start else args.name,
            previews=previews,
            heartbeat_interval=args.heartbeat_interval,
            url_for=deployment.url_for(store),
        )

    drainer = Drainer.from_settings(connection, settings)  # this process's share of the webhook deliveries
    return serve(make_worker, connection, burst=args.burst, logging_level=args.log_level, drainer=drainer)


def _published_store(deployment):
    """The worker's store, published as the deployment's; waits out a Redis that is not up yet."""
    from .connection import REDIS_DOWN

    log = logging.getLogger("latentq")
    for attempt in itertools.count():
        try:
            return deployment.open_store(publish=True)
        except REDIS_DOWN as exc:
            if attempt == 0:
                log.warning("Redis is unreachable (%s); waiting for it", exc)
            time.sleep(min(5.0, 0.2 * 2**attempt))
    raise AssertionError("unreachable")


def public_url_for(host: str, port: int) -> str:
    """The API's URL for other processes: ``$LATENTQ_PUBLIC_URL``, else the address it listens on (a
    wildcard address named by this machine's host name)."""
    import socket

    from .config import Settings

    configured = Settings.from_env().public_url
    if configured:
        return configured.rstrip("/")
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from .api import create_app
    from .config import Settings

    # Published in Redis at start: every process of the deployment makes its result URLs with it.
    settings = Settings.from_env(public_url=public_url_for(args.host, args.port))
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level.lower())
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from .config import default_up_store
    from .stack import Stack, StackOptions

    expand_devices(args.device)  # cuda:all without a GPU fails here, before anything starts
    # Several CPU workers each running torch's one-thread-per-core would oversubscribe the cores.
    torch_threads = args.torch_threads or max(1, (os.cpu_count() or 1) // args.workers)
    options = StackOptions(
        models=args.models or ["taef2"], workers=args.workers, host=args.host, port=args.port,
        device=args.device, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        heartbeat_interval=args.heartbeat_interval, torch_threads=torch_threads, worker_flags=_gpu_flags(args), log_level=args.log_level.lower(),
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


class _DirectBatches:
    """``latentq submit`` straight through Redis: Client.submit_many and Client.batch_info."""

    def __init__(self) -> None:
        from .producer import Client

        self.client = Client()

    def submit(self, samples: list, model: str, output_format: str) -> list[tuple[str, list[str]]]:
        """(batch id, job ids) of each batch, together covering ``samples`` in order."""
        limit = self.client.settings.limits.max_batch_submit
        out = []
        for start in range(0, len(samples), limit):
            jobs = self.client.submit_many(samples[start : start + limit], model=model, output_format=output_format)
            out.append((str(jobs[0].batch_id), [job.id for job in jobs]))
        return out

    def status(self, batch_id: str) -> dict:
        return self.client.batch_info(batch_id)

    def read(self, result: dict) -> bytes:
        from .spec import ResultObject

        return self.client.read_result(ResultObject.from_dict(result))


class _HttpBatches:
    """``latentq submit --api URL``: POST /v1/batches and GET /v1/batches/{id}."""

    def __init__(self, api: str, api_key: str | None = None) -> None:
        import httpx

        from .producer.http import auth_headers

        self.http = httpx.Client(base_url=api, timeout=60, headers=auth_headers(api_key))

    def submit(self, samples: list, model: str, output_format: str) -> list[tuple[str, list[str]]]:
        import itertools

        import torch

        from .producer.http import _raise_for
        from .wire import latent_to_bytes

        out = []
        # An HTTP batch is one stacked tensor: consecutive samples of one shape and dtype go together.
        for _, group in itertools.groupby(samples, key=lambda t: (tuple(t.shape), t.dtype)):
            response = self.http.post("/v1/batches", params={"model": model, "output_format": output_format},
                                      content=latent_to_bytes(torch.stack(list(group))))  # fmt: skip
            _raise_for(response)
            body = response.json()
            out.append((body["id"], body["job_ids"]))
        return out

    def status(self, batch_id: str) -> dict:
        from .producer.http import _raise_for

        response = self.http.get(f"/v1/batches/{batch_id}")
        _raise_for(response)
        return response.json()

    def read(self, result: dict) -> bytes:
        from .producer.http import _raise_for, result_request

        response = self.http.send(result_request(self.http, result["url"]), follow_redirects=True)
        _raise_for(response)
        return response.content


def cmd_submit(args: argparse.Namespace) -> int:
    from safetensors.torch import load_file
    from tqdm import tqdm

    from .spec import JobStatus

    labels, samples = [], []
    for path in args.files:
        for name, tensor in load_file(str(path)).items():
            batch = tensor if tensor.ndim == 4 and tensor.shape[0] > 1 else tensor.reshape(1, *tensor.shape[-3:])
            for index, sample in enumerate(batch.unbind(0)):
                labels.append(f"{path.stem}-{name}-{index}")
                samples.append(sample)
    batches: _DirectBatches | _HttpBatches = _HttpBatches(args.api, args.api_key) if args.api else _DirectBatches()
    submitted = batches.submit(samples, args.model, args.output_format)
    label_of: dict[str, str] = {}
    job_ids = [job_id for _, ids in submitted for job_id in ids]
    for label, job_id in zip(labels, job_ids):
        label_of[job_id] = label
        print(f"{label}\t{job_id}", flush=True)
    for batch_id, ids in submitted:
        print(f"batch {batch_id}: {len(ids)} job(s)", file=sys.stderr)
    if not args.wait:
        return 0
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)

    failed = 0

    def report(job: dict) -> None:
        nonlocal failed
        label = label_of[job["id"]]
        if job["status"] != JobStatus.FINISHED.value:
            failed += 1
            tqdm.write(f"{label}\t{job['id']}\t{job['status']}: {job.get('error') or ''}", file=sys.stderr)
            return
        results = job.get("results") or []
        for index, result in enumerate(results):
            line = f"{label}\t{job['id']}\t{result['url'] or result['key']}"  # no URL: the deployment has no API
            if args.out:
                ext = result["key"].rsplit(".", 1)[-1]
                target = args.out / (f"{label}.{index}.{ext}" if len(results) > 1 else f"{label}.{ext}")
                target.write_bytes(batches.read(result))
                line += f"\t{target}"
            tqdm.write(line)

    # Poll each batch's status (one request per batch, not per job); the bar advances as jobs end.
    pending = {batch_id: set(ids) for batch_id, ids in submitted}
    deadline = time.monotonic() + args.timeout
    with tqdm(total=len(job_ids), desc="decoding", unit="job", file=sys.stderr) as bar:
        while pending:
            for batch_id in list(pending):
                body = batches.status(batch_id)
                for job in body["jobs"]:
                    if job["id"] in pending[batch_id] and JobStatus(job["status"]).is_final:
                        pending[batch_id].discard(job["id"])
                        report(job)
                        bar.update(1)
                if body["done"]:  # jobs still missing are older than the result TTL
                    for job_id in pending.pop(batch_id):
                        report({"id": job_id, "status": "unknown", "error": "its record expired"})
                        bar.update(1)
            if pending and time.monotonic() >= deadline:
                for job_id in sorted(set().union(*pending.values())):
                    report({"id": job_id, "status": "timeout", "error": f"not done after {args.timeout:g} s"})
                break
            if pending:
                time.sleep(0.2)
    return 1 if failed else 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Results and finished jobs' stored records live LATENTQ_RESULT_TTL seconds: delete what is older."""
    import math

    from .config import Settings
    from .errors import ConfigError
    from .store import LocalStore, open_store
    from .store.s3 import S3Store

    settings = Settings.from_env()
    ttl = settings.result_ttl if args.older_than is None else args.older_than
    if ttl < 0:
        raise ConfigError(f"--older-than must be >= 0 seconds, not {ttl:g}")
    deployment = _reachable_deployment(settings)
    if deployment is not None:  # its store (unless one is given here)
        store = deployment.current_store()
    else:
        store = open_store(settings.store, public_url=settings.public_url)
    if isinstance(store, LocalStore):
        deleted: list[str] = []
        print(f"deleted {store.expire(ttl, deleted)} result object(s) older than {ttl:g} s from {store.root}")
        if deployment is not None and deleted:
            _forget_deleted(deployment, deleted)
        return 0
    if not isinstance(store, S3Store):
        raise ConfigError(f"cleanup does not know how to expire {store!r}")
    where = f"s3://{store.bucket}/{store.prefix}"
    # Lifecycle rules count whole days: round up so no object goes before its TTL.
    days = max(1, math.ceil(ttl / 86400))
    lifecycle = store.set_expiry(days)
    if lifecycle:
        print(f"lifecycle rule set: objects under {where} expire after {days} day(s)")
    else:
        print(f"{where}: the server does not support lifecycle rules; deleting old objects by listing")
    if args.sweep or not lifecycle:
        count = store.expire(ttl)
        print(f"deleted {count} result object(s) older than {ttl:g} s from {where}")
        if deployment is not None and count:
            deployment.record_cleanup()  # (S3's listing does not name the jobs: their RQ records lapse by themselves)
    return 0


def _reachable_deployment(settings):
    """The deployment in Redis, or None when Redis cannot be reached (cleanup of a store alone still works)."""
    from .connection import REDIS_DOWN, redis_from_url
    from .deployment import Deployment

    connection = redis_from_url(settings.redis_url)
    try:
        connection.ping()
    except REDIS_DOWN as exc:
        logging.getLogger("latentq").warning("Redis at %s is unreachable (%s): cleaning the store only, "
                                             "cached job records are not told", settings.redis_url, exc)  # fmt: skip
        connection.close()
        return None
    return Deployment(connection, settings)


def _forget_deleted(deployment, keys: list[str]) -> None:
    """Jobs whose outputs were deleted read as gone: their RQ records go, every process's cache is dropped."""
    from .records import forget_finished, job_of_record

    jobs = [job for job in map(job_of_record, keys) if job]
    forget_finished(deployment.connection, jobs)
    deployment.record_cleanup()


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from rq import Worker

    from . import keys, metrics
    from .producer import Client

    client = Client()
    if args.job_id:
        print(json.dumps(client.job_info(args.job_id).to_dict(), indent=2))
        return 0
    # finished / failed: all-time totals (the metrics counters; Redis keeps job records only briefly).
    # Only models with work or workers: a registry of a dozen models would be mostly rows of zeros.
    print(f"{'model':<16} {'queued':>7} {'started':>8} {'finished':>9} {'failed':>7} {'workers':>8} {'jobs/min':>9}")
    for name in client.registry.names():
        queues = [client.queue(name), client.queue(name, "high")]
        started = sum(q.started_job_registry.count for q in queues)
        queued, serving = client.queued_count(name), client.workers_serving(name)
        if not (queued or started or serving):
            continue
        totals = metrics.jobs_total(client.connection, name)
        finished, failed = totals["finished"], totals["failed"]
        recent = metrics.finished_last_minute(client.connection, name)
        print(f"{name:<16} {queued:>7} {started:>8} {finished:>9} {failed:>7} {serving:>8} {recent:>9.0f}")
    for worker in Worker.all(connection=client.connection):
        # A model has two queues (normal and high priority): name it once.
        models = list(dict.fromkeys(keys.model_from_queue(q) or q for q in worker.queue_names()))
        print(f"worker {worker.name}: {worker.get_state()}, models {', '.join(models)}, "
              f"{worker.successful_job_count} ok, {worker.failed_job_count} failed")  # fmt: skip
    print(_deployment_line(client))
    return 0


def _deployment_line(client) -> str:
    """Which deployment this is and how it was found (a flag or variable, a running `latentq up`, the default)."""
    from .config import DEFAULT_REDIS_URL, read_up_state

    if (state := read_up_state()) and state.get("redis_url") == client.settings.redis_url:
        found = f"latentq up, pid {state['pid']}"
    elif client.settings.redis_url == DEFAULT_REDIS_URL:
        found = "the default"
    else:
        found = "--redis-url or $LATENTQ_REDIS_URL"
    store = client.deployment.published_store()
    return (f"deployment: Redis {client.settings.redis_url} ({found}), API {client.deployment.public_url() or 'none'}, "
            f"results {store[0] if store else 'not published yet'}")


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    rows = run_demo(args.images, args.out, device=args.device, workers=args.workers, port=args.port)
    return 0 if min(r.psnr for r in rows) >= 28.0 else 1


COMMANDS = {"up": cmd_up, "worker": cmd_worker, "api": cmd_api, "submit": cmd_submit, "status": cmd_status, "demo": cmd_demo,
            "cleanup": cmd_cleanup, "keys": lambda args: _cmd_keys(args)}


def _cmd_keys(args: argparse.Namespace) -> int:
    from .cli_keys import cmd_keys

    return cmd_keys(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv  # `worker --device cuda:all` starts this command again, once per GPU
    from .config import log_json_from_env

    configure_logging(args.log_level, json_lines=bool(args.log_json or log_json_from_env()))
    _apply_flags(args)
    from .errors import LatentqError

    try:
        return COMMANDS[args.command](args)
    except LatentqError as exc:
        print(f"latentq: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
