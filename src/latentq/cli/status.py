"""``latentq status``: queues and workers at a glance, or one job's status as JSON."""

from __future__ import annotations

import argparse

__all__ = ["cmd_status"]


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from rq import Worker

    from ..producer import Client
    from ..state import keys, metrics

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
    from ..config import DEFAULT_REDIS_URL, read_up_state

    if (state := read_up_state()) and state.get("redis_url") == client.settings.redis_url:
        found = f"latentq up, pid {state['pid']}"
    elif client.settings.redis_url == DEFAULT_REDIS_URL:
        found = "the default"
    else:
        found = "--redis-url or $LATENTQ_REDIS_URL"
    store = client.deployment.published_store()
    return (f"deployment: Redis {client.settings.redis_url} ({found}), API {client.deployment.public_url() or 'none'}, "
            f"results {store[0] if store else 'not published yet'}")
