"""What routes depend on, as FastAPI dependencies: the app's context, the caller's API key, base URLs.

    async def handler(c: Ctx): ...              # routes open to anyone who reaches the API
    async def handler(caller: Caller): ...      # routes that check the API key: caller.ctx, caller.owner
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from service.api.access import JobAccess
from service.api.auth import Auth
from service.api.events import EventHub
from service.api.metrics import ApiMetrics
from service.catalog import Catalog
from service.jobs.view import to_view
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


# Dependencies are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop
# per dependency per request (it halved the job reads a second an API process answers).


async def context(request: Request) -> Context:
    return request.app.state.ctx


@dataclass(frozen=True, slots=True)
class Authorized:
    ctx: Context
    owner: str | None  # the API key's name; None when keys are off, so no ownership check applies


async def authorized(request: Request) -> Authorized:
    """The context and the caller's API key name, checked: 401 when keys are on and it is missing or
    wrong. One dependency, not two: each costs FastAPI a resolution per request."""
    ctx = request.app.state.ctx
    return Authorized(ctx, ctx.auth.owner(request))


Ctx = Annotated[Context, Depends(context)]
Caller = Annotated[Authorized, Depends(authorized)]


def base_url(request: Request) -> str:
    public = request.app.state.ctx.settings.public_url
    return (public or str(request.base_url)).rstrip("/")
