"""What every route needs: the app's context, JSON responses, base URLs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request, Response

from service import jobstore as js
from service.auth import Auth
from service.catalog import Catalog
from service.events import EventHub
from service.metrics import ApiMetrics
from service.queue import JobQueue
from service.settings import Settings
from service.storage import Storage


@dataclass
class Context:
    settings: Settings
    catalog: Catalog
    redis: Any
    hub: EventHub
    queue: JobQueue
    storage: Storage
    metrics: ApiMetrics
    auth: Auth

    def owner(self, request: Request) -> str | None:
        """The caller's key name, checked (401 when keys are on and it is missing or wrong);
        None when keys are off, so no ownership check applies."""
        name = self.auth.owner(request)
        return name if self.auth.enabled else None

    def view(self, h: dict, request: Request) -> dict:
        return js.to_view(h, base_url(request), self.auth.sign)


def ctx(request: Request) -> Context:
    return request.app.state.ctx


def base_url(request: Request) -> str:
    public = request.app.state.ctx.settings.public_url
    return (public or str(request.base_url)).rstrip("/")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type="application/json")
