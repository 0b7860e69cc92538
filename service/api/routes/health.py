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
    """Ready when Redis answers and each configured task is served by a live worker, with at least one of
    its models. `missing_tasks`: the tasks no live worker serves (why it is 503). `unserved_defaults`: each
    task's default model no live worker serves, as {task, model} (a warning, once the task is served by
    another model: a request that names no model waits in the queue until a worker serves the default).
    `?scope=api` asks about this API process alone (Redis answers): the probe for a load balancer, so that
    API pods keep serving job reads while a worker group is down."""
    try:
        await c.redis.ping()
        if scope == "api":
            return json_response({"status": "ready", "redis": True})
        workers = await live_workers(c.redis, c.settings.heartbeat_ttl_s)
    except REDIS_DOWN:
        return json_response({"status": "not_ready", "redis": False, "missing_tasks": [], "unserved_defaults": []},
                             503, RETRY)
    body = readiness(c.catalog, {pair for w in workers for pair in w.get("serves", [])})
    body = {"status": "ready" if not body["missing_tasks"] else "not_ready", "redis": True, "workers": len(workers),
            **body}
    return json_response(body, 503 if body["missing_tasks"] else 200, RETRY if body["missing_tasks"] else None)


def readiness(catalog, served: set[str]) -> dict:
    """What /readyz reports about the configured tasks (those with a default model in `catalog`), from the
    (task, model) pairs live workers serve (as heartbeats name them: "task/model"). A task counts as
    served with any of its models in this catalogue (a request may name it); its default unserved is a
    warning only."""
    return {"missing_tasks": [t for t in catalog.defaults
                              if not any(serves(t, m) in served for m in catalog.models_for(t))],
            "unserved_defaults": [{"task": t, "model": m} for t, m in catalog.defaults.items()
                                  if serves(t, m) not in served]}


@router.get("/metrics", response_class=Response)
async def metrics(c: Ctx):
    """Prometheus text exposition."""
    try:
        workers = await live_workers(c.redis, c.settings.heartbeat_ttl_s)
    except Exception:
        workers = []
    body = await c.metrics.scrape(c.redis, c.catalog, workers)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
