"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response

from service.api.deps import Ctx
from service.api.errors import RETRY_AFTER_S, json_response
from service.jobs.heartbeats import live_workers, serves
from service.redis import REDIS_DOWN

router = APIRouter()
RETRY = {"Retry-After": str(RETRY_AFTER_S)}


@router.get("/healthz")
async def healthz():
    """The process answers. Never depends on Redis."""
    return json_response({"status": "ok"})


@router.get("/readyz", responses={503: {"description": "Redis is unreachable or a task has no live worker"}})
async def readyz(c: Ctx, scope: Literal["service", "api"] = "service"):
    """Ready when Redis answers and a live worker serves each configured task. `?scope=api` asks about
    this API process alone (Redis answers): the probe for a load balancer, so that API pods keep
    serving job reads while a worker group is down."""
    try:
        await c.redis.ping()
        if scope == "api":
            return json_response({"status": "ready", "redis": True})
        workers = await live_workers(c.redis, c.settings.heartbeat_ttl_s)
    except REDIS_DOWN:
        return json_response({"status": "not_ready", "redis": False, "missing_tasks": []}, 503, RETRY)
    served = {pair for w in workers for pair in w.get("serves", [])}
    missing = [t for t, model in c.catalog.defaults.items() if serves(t, model) not in served]
    body = {"status": "ready" if not missing else "not_ready", "redis": True, "workers": len(workers),
            "missing_tasks": missing}
    return json_response(body, 200 if not missing else 503, None if not missing else RETRY)


@router.get("/metrics", response_class=Response)
async def metrics(c: Ctx):
    """Prometheus text exposition."""
    try:
        workers = await live_workers(c.redis, c.settings.heartbeat_ttl_s)
    except Exception:
        workers = []
    body = await c.metrics.scrape(c.redis, c.catalog, workers)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
