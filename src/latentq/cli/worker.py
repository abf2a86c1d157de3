"""``latentq worker``: load the models on a device and serve their queues (``--device cuda:all``: one
process per GPU). Kept apart from ``cli.py`` so that the parser stays free of torch."""

from __future__ import annotations

import argparse
import itertools
import logging
import signal
import sys
import time

__all__ = ["add_gpu_options", "cmd_worker", "expand_devices", "gpu_flags", "gpu_options"]


def expand_devices(device: str) -> list[str]:
    """``--device``'s value -> the devices to run one worker process on each: ``cuda:all`` is every visible GPU."""
    if device != "cuda:all":
        return [device]
    import torch

    from ..errors import ConfigError

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
    """``--device cuda:all``: one worker process per GPU; stop signals are passed on, the worst exit code returned.

    Each child runs in a session of its own, so a terminal's Ctrl-C reaches this process only and each child
    gets it once, forwarded: twice (the terminal's and ours) RQ reads as a cold shutdown, which abandons the
    batch in flight. A child is sent SIGTERM if this process dies first (Linux), so none is left orphaned."""
    import subprocess

    log = logging.getLogger("latentq")
    argv = args.argv if args.argv is not None else sys.argv[1:]
    children = [subprocess.Popen([sys.executable, "-m", "latentq", *_with_device(argv, device, args.name)],
                                 start_new_session=True, preexec_fn=_terminate_with_parent)  # fmt: skip
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


def _terminate_with_parent() -> None:
    """In a child, before exec: SIGTERM when the parent exits (Linux's PR_SET_PDEATHSIG; elsewhere nothing)."""
    if sys.platform != "linux":
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except OSError:
        pass


def add_gpu_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                        help="the decoders' 2-D convolutions in channels_last memory format (auto, the default: "
                             "on CUDA and CPU devices; never for 3-D video VAEs)")  # fmt: skip
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each model's decoder: the models file's warmup_shapes are compiled "
                             "at start and only they run compiled, others eager (counted); a model without "
                             "warmup_shapes compiles its first 8 shapes as they come (slower start; faster "
                             "decodes on GPUs)")  # fmt: skip


def gpu_options(args: argparse.Namespace) -> dict:
    """``--channels-last``/``--compile`` as load_model's keywords."""
    return {"channels_last": {"auto": None, "on": True, "off": False}[args.channels_last], "compile": args.compile}


def gpu_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """``up``'s ``--channels-last``/``--compile``, as its workers' flags."""
    return ("--channels-last", args.channels_last) + (("--compile",) if args.compile else ())


def cmd_worker(args: argparse.Namespace) -> int:
    from ..config import Settings
    from ..models.loader import load_model
    from ..models.registry import load_registry
    from ..state.connection import redis_from_url
    from ..state.deployment import Deployment
    from ..worker import DecodeWorker
    from ..worker.model_cache import ModelCache, parse_memory

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
        return load_model(spec, device, args.dtype, **gpu_options(args))

    models = ModelCache(specs, load, budget_bytes=budget, device=device)
    models.preload()  # every model loads once at start (a bad one fails here); over a budget the last ones stay
    previews = {}
    for name, spec in specs.items():
        if spec.preview and not args.no_previews:
            try:
                previews[name] = load_model(registry.get(spec.preview), device, args.dtype,
                                            channels_last=gpu_options(args)["channels_last"])  # fmt: skip
            except Exception as exc:  # previews are optional: serve full decodes without them
                log.warning("no preview decoder for %s: %s", name, exc)
    from ..webhooks.outbox import Drainer
    from ..worker.runner import serve

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
    from ..state.connection import REDIS_DOWN

    log = logging.getLogger("latentq")
    for attempt in itertools.count():
        try:
            return deployment.open_store(publish=True)
        except REDIS_DOWN as exc:
            if attempt == 0:
                log.warning("Redis is unreachable (%s); waiting for it", exc)
            time.sleep(min(5.0, 0.2 * 2**attempt))
    raise AssertionError("unreachable")
