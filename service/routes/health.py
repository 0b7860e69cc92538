"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response

from service.heartbeats import live_workers
from service.jobstore import serves
from service.queue import REDIS_DOWN
from service.routes.common import ctx, json_response

router = APIRouter()


@router.get("/healthz")
async def healthz():
    """The process answers. Never depends on Redis."""
    return json_response({"status": "ok"})


@router.get("/readyz", responses={503: {"description": "Redis is unreachable or a task has no live worker"}})
async def readyz(request: Request, scope: Literal["service", "api"] = "service"):
    """Ready when Redis answers and a live worker serves each configured task. `?scope=api` asks about
    this API process alone (Redis answers): the probe for a load balancer, so that API pods keep
    serving job reads while a worker group is down."""
    c = ctx(request)
    try:
        await c.redis.ping()
        if scope == "api":
            return json_response({"status": "ready", "redis": True})
        workers = await live_workers(c.redis, c.settings.heartbeat_ttl_s)
    except REDIS_DOWN:
        return json_response({"status": "not_ready", "redis": False, "missing_tasks": []}, 503,
                             {"Retry-After": "5"})
    served = {pair for w in workers for pair in w.get("serves", [])}
    missing = [t for t, model in c.catalog.defaults.items() if serves(t, model) not in served]
    body = {"status": "ready" if not missing else "not_ready", "redis": True, "workers": len(workers),
            "missing_tasks": missing}
    return json_response(body, 200 if not missing else 503, None if not missing else {"Retry-After": "5"})


@router.get("/metrics", response_class=Response)
async def metrics(request: Request):
    """Prometheus text exposition."""
    c = ctx(request)
    try:
        workers = await live_workers(c.redis, c.settings.heartbeat_ttl_s)
    except Exception:
        workers = []
    body = await c.metrics.scrape(c.redis, c.catalog, workers)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
