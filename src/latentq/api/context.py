"""What the routes share: the application's job service, settings, long-polls and store (``Context``).

``create_app`` makes one :class:`ApiContext` and keeps it in ``app.state.context``; a route takes it as
a parameter annotated ``Context`` (a FastAPI dependency: no parameter in the OpenAPI document).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from ..config import Settings
from ..producer.service import JobService
from ..store import ObjectStore
from .waiter import LongPolls

__all__ = ["ApiContext", "Context", "api_context"]


@dataclass(frozen=True)
class ApiContext:
    service: JobService
    settings: Settings
    long_polls: LongPolls  # waits in the event loop on the service's one listener
    store: ObjectStore | None = None  # given to create_app; None: the deployment's, as current_store() finds it

    def current_store(self) -> ObjectStore:
        """The store given, else this API's setting, else the deployment's (it moves when its workers' moves)."""
        return self.store if self.store is not None else self.service.store

    def url_for_result(self, request: Request, key: str) -> str | None:
        """A result's URL. Signed (local store): fetchable with no API key until it expires; made on every read."""
        base = self.service.deployment.public_url() or str(request.base_url)
        return self.service.deployment.result_url(self.current_store(), key, base)

    def url_for(self, request: Request) -> Callable[[str], str | None]:
        """``url_for_result`` for this request: what the service's ``url_for=`` takes."""
        return lambda key: self.url_for_result(request, key)


async def api_context(request: Request) -> ApiContext:
    return request.app.state.context


Context = Annotated[ApiContext, Depends(api_context)]
