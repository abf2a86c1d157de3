"""The web console at ``/``, its live overview (``GET /v1/overview``) and the offline API docs.

The console is three static files (``api/static/``: HTML, JS, CSS; no framework, no build step) that
talk to the JSON API like any script. Everything a page loads comes from this server: the console's
own files, and Swagger UI from the ``fastapi-offline`` package's copy (no CDN), so both work on a
machine with no network. (No ReDoc: its page fetches its logo from its vendor's CDN.)
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from rq import Worker

from ...producer.service import JobService
from ...state import keys, metrics
from ...state.worker_stats import Counter as StatsCounter
from ...state.worker_stats import WorkerStats
from ..context import Context
from ..openapi import errors

__all__ = ["CHART_MINUTES", "DOCS_ASSETS", "STATIC_DIR", "mount_static", "overview", "router"]

STATIC_DIR = Path(__file__).parents[1] / "static"
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"  # Swagger UI's bundle and CSS, a favicon
CHART_MINUTES = 15  # the throughput chart's span (metrics keeps the per-minute counters a little longer)
WORKER_COUNTERS = (StatsCounter.MODEL_LOADS, StatsCounter.MODEL_EVICTIONS, StatsCounter.COMPILE_EAGER_CALLS,
                   StatsCounter.ENCODE_WAIT_MS)



def overview(service: JobService) -> dict[str, Any]:
    """Queues per model (depth, running, live workers, why jobs wait, jobs per minute) and live workers.

    Two reads whatever the number of models (the console polls it): the workers, then one pipeline.
    """
    connection = service.connection
    now = time.time()
    minute = int(now // 60)
    minutes = range(minute - CHART_MINUTES + 1, minute + 1)
    names = service.registry.names()
    workers = Worker.all(connection=connection)
    served = [list(dict.fromkeys(keys.model_from_queue(q) or q for q in worker.queue_names())) for worker in workers]
    serving = Counter(model for models in served for model in models)
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            for queue in (service.queue(name), service.queue(name, "high")):
                pipe.llen(queue.key)
                # The registry's size as it stands: RQ's ``count`` would run its cleanup (the workers' upkeep).
                pipe.zcard(queue.started_job_registry.key)
            pipe.mget([keys.finished_per_minute_key(name, m) for m in minutes])
            pipe.hmget(keys.metrics_key(name), [f"jobs_total:{status}" for status in metrics.STATUSES])
        for worker in workers:
            pipe.hgetall(keys.worker_stats_key(worker.name))
        replies = pipe.execute()
    models = []
    for index, name in enumerate(names):
        queued, started, queued_high, started_high, per_minute, totals = replies[6 * index : 6 * index + 6]
        queued, started = queued + queued_high, started + started_high
        per_minute = [int(v or 0) for v in per_minute]
        totals = {status: int(v or 0) for status, v in zip(metrics.STATUSES, totals)}
        if not (queued or started or serving[name] or any(per_minute) or any(totals.values())):
            continue  # a model nobody serves or uses: a dozen rows of zeros say nothing
        models.append({
            "name": name, "queued": queued, "started": started, "workers": serving[name], "totals": totals,
            "finished_per_minute": per_minute,
            "waiting_reason": f"no live worker serves model {name!r}" if queued and not serving[name] else None,
        })  # fmt: skip
    rows = []
    for worker, models_served, raw in zip(workers, served, replies[6 * len(names) :]):
        stat = WorkerStats.from_hash(raw)
        rows.append({
            "name": worker.name, "host": worker.hostname, "pid": worker.pid, "state": str(worker.get_state()),
            "models": models_served, "device": stat.device,
            "decode_calls": stat.decode_calls, "decoded_jobs": stat.decoded_jobs,
            "finished": worker.successful_job_count, "failed": worker.failed_job_count,
            "started_at": worker.birth_date.isoformat() if worker.birth_date else None,
            "gpu_memory_used": stat.gpu_memory_used, "gpu_memory_total": stat.gpu_memory_total,
            # model switches (--model-memory-budget), --compile's eager calls, waits for a free encoder
            **{counter.value: getattr(stat, counter.value) for counter in WORKER_COUNTERS},
        })  # fmt: skip
    return {"time": now, "chart_minutes": CHART_MINUTES, "models": models, "workers": rows}


router = APIRouter()


def mount_static(app: FastAPI) -> None:
    """``/console/*`` (the console's files) and ``/docs-assets/*`` (Swagger UI's), served from this package.

    The app must be made with ``docs_url=None, redoc_url=None``: FastAPI's own pages load from a CDN.
    """
    app.mount("/console", StaticFiles(directory=STATIC_DIR), name="console")
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")


@router.get("/", include_in_schema=False)
async def console_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/v1/overview", summary="Queues, workers and throughput at a glance (the console's live view)",
            responses=errors())  # fmt: skip
async def get_overview(ctx: Context) -> dict[str, Any]:
    return await run_in_threadpool(overview, ctx.service)


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    app = request.app
    return get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
        swagger_js_url="/docs-assets/swagger-ui-bundle.js", swagger_css_url="/docs-assets/swagger-ui.css",
        swagger_favicon_url="/docs-assets/favicon.png", oauth2_redirect_url="/docs/oauth2-redirect",
        swagger_ui_parameters={"validatorUrl": None},  # the default badge asks an online validator
    )  # fmt: skip


@router.get("/docs/oauth2-redirect", include_in_schema=False)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()
