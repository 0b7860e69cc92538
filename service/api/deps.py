"""What routes depend on, as FastAPI dependencies: the app's context, the caller's API key, base URLs.

    async def handler(c: Ctx, owner: Owner): ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from service.api.access import JobAccess
from service.api.auth import Auth
from service.api.events import EventHub
from service.api.metrics import ApiMetrics
from service.api.view import to_view
from service.catalog import Catalog
from service.settings import Settings
from service.storage import Storage


@dataclass
class Context:
    """Everything one API process shares between requests, built once in the app's lifespan."""

    settings: Settings
    catalog: Catalog
    redis: Any
    hub: EventHub
    jobs: JobAccess
    storage: Storage
    metrics: ApiMetrics
    auth: Auth

    def view(self, h: dict, request: Request) -> dict:
        return to_view(h, base_url(request), self.auth.sign)


def context(request: Request) -> Context:
    return request.app.state.ctx


def owner(request: Request) -> str | None:
    """The caller's API key name, checked (401 when keys are on and it is missing or wrong); None when
    keys are off, so no ownership check applies."""
    return context(request).auth.owner(request)


Ctx = Annotated[Context, Depends(context)]
Owner = Annotated[str | None, Depends(owner)]


def base_url(request: Request) -> str:
    public = request.app.state.ctx.settings.public_url
    return (public or str(request.base_url)).rstrip("/")
