"""The HTTP API (FastAPI): submit, status, results, models, health.

The API never loads a model: it validates against the registry's specs,
enqueues through the same job service a Python ``Client`` fronts
(``latentq.producer.service``), and reads job records from RQ. ``create_app``
assembles the routers of ``latentq.api.routes`` (one per resource), the
API-key middleware and the error handlers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from .. import __version__
from ..config import Settings
from ..producer.client import Client
from ..producer.service import JobService
from ..state.connection import REDIS_DOWN, redis_from_url
from ..state.tenants import TenantDirectory
from ..store import ObjectStore
from ..webhooks.outbox import Drainer
from .auth import install_tenants
from .context import ApiContext
from .handlers import install_error_handlers
from .routes import batches, console, health, jobs, models, remote, results
from .routes.jobs import MAX_WAIT_S
from .waiter import LongPolls

__all__ = ["MAX_WAIT_S", "create_app"]

log = logging.getLogger("latentq.api")

# The API's threads share this many Redis connections (a burst waits for one rather than opening more);
# its event loop has as many again (api/waiter.py), and its one listener one.
REDIS_CONNECTIONS = 16


def create_app(settings: Settings | None = None, *, client: Client | None = None, store: ObjectStore | None = None,
               service: JobService | None = None) -> FastAPI:  # fmt: skip
    """The API. ``service`` (or ``client``'s): the job service to use, left open at shutdown; else one of
    its own on a pool of ``REDIS_CONNECTIONS``. ``store``: where results are (else the deployment's)."""
    settings = settings or Settings.from_env()
    owns_service = service is None and client is None
    if service is None:
        service = client.service if client is not None else JobService(
            settings, store=store, connection=redis_from_url(settings.redis_url, max_connections=REDIS_CONNECTIONS))
    # Long-polls wait in the event loop on the service's one listener, not on threads.
    ctx = ApiContext(service, settings, LongPolls(service.listener(), settings.redis_url), store)

    def publish() -> None:
        """The deployment learns this API's public URL and (when set here) its store, for every process."""
        try:
            if settings.public_url:
                service.deployment.publish_public_url(settings.public_url)
            if store is not None or settings.store:
                service.deployment.publish_store(ctx.current_store())
        except REDIS_DOWN as exc:  # a Redis outage at start: the workers' own description serves meanwhile
            log.warning("could not publish the deployment's description: %s", exc)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.listener().start(keep=True)  # subscribed before the first long-poll arrives, and stays
        await run_in_threadpool(publish)
        # This process's share of the webhook deliveries (latentq.webhooks.outbox), on a connection of its own.
        drainer = Drainer.from_settings(redis_from_url(settings.redis_url, max_connections=8), settings).start()
        yield
        await ctx.long_polls.aclose()
        await run_in_threadpool(drainer.stop)  # attempts in flight end; the rest stay in Redis for others
        drainer.connection.close()
        if owns_service:
            await run_in_threadpool(service.close)

    app = FastAPI(
        lifespan=lifespan,
        title="latentq",
        version=__version__,
        description="Queued, batched VAE decoding for latent diffusion models.",
        docs_url=None,  # /docs comes from the console's router, with its assets served here (no CDN)
        redoc_url=None,
    )
    app.state.context = ctx  # what the routes read (latentq.api.context.Context)
    app.state.service = service
    app.state.long_polls = ctx.long_polls
    app.state.store = store  # None: the deployment's, as current_store() finds it
    app.state.current_store = ctx.current_store
    # Keys in Redis (latentq keys) and LATENTQ_API_KEYS; none anywhere: authentication is off.
    install_tenants(app, TenantDirectory(service.connection, settings.api_keys))
    install_error_handlers(app)  # latentq.errors.HTTP_ERRORS: one status and error body per exception
    for module in (jobs, batches, results, models, health, console, remote):
        app.include_router(module.router)
    console.mount_static(app)  # the console's files and the offline docs' assets
    return app
