"""API metrics: HTTP requests, jobs submitted, and queue state read from Redis at scrape time. Names
follow Prometheus conventions with the `fresco_` prefix.

Correct with several API processes (`fresco api --processes N`): counters and histograms then live in
prometheus_client's multiprocess files (PROMETHEUS_MULTIPROC_DIR, which `fresco api` sets up), and a
scrape, whichever process answers it, sums every process's. The queue, job, worker and pending-webhook
gauges are read from Redis by the process that answers the scrape, so they need no per-process state at all.
The webhook dispatcher each API process runs counts into this registry too (service/webhooks/metrics.py).

HTTP metrics come from a small ASGI middleware: `fresco_http_requests_total{method,status,handler}`
and `fresco_http_request_duration_seconds{method,handler}`, by route template, untemplated paths
(404s) and /metrics left out, as prometheus-fastapi-instrumentator names them. It costs a few
microseconds a request; the library's middleware cost about a tenth of the API's time per request.
"""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from service.api.allow import METHODS
from service.jobs import keys
from service.jobs.protocol import now
from service.jobs.states import JobStatus
from service.tasks import TASK_NAMES
from service.webhooks.metrics import WebhookMetrics, pending_family

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
EXCLUDED_HANDLERS = frozenset({"/metrics"})
# The methods a label may name; any other (the HTTP parser accepts WebDAV's, SEARCH, PURGE... from anyone,
# without a key) counts as "other", so that no client can grow the label's values.
KNOWN_METHODS = frozenset(METHODS)


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode, when it is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


class HttpMetrics:
    """Pure ASGI middleware: one counter increment and one histogram observation per request."""

    def __init__(self, app, metrics: "ApiMetrics"):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")  # set by FastAPI's router on a match; absent for a 404
            handler = getattr(route, "path", None)
            if handler is not None and handler not in EXCLUDED_HANDLERS:
                method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
                self.metrics.http_requests.labels(method, str(status), handler).inc()
                self.metrics.http_duration.labels(method, handler).observe(time.perf_counter() - start)


class _Live:
    """A collector of families built at scrape time (the state read from Redis)."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


class ApiMetrics:
    """One registry per app, so several apps in one process (tests) never collide."""

    def __init__(self):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.jobs_submitted = Counter(
            "fresco_jobs_submitted_total", "Jobs accepted by POST /generate.", ["task"], registry=r)
        self.http_requests = Counter(
            "fresco_http_requests_total", "HTTP requests by method, status and route template.",
            ["method", "status", "handler"], registry=r)
        self.http_duration = Histogram(
            "fresco_http_request_duration_seconds", "HTTP request latency by method and route template.",
            ["method", "handler"], buckets=DURATION_BUCKETS, registry=r)
        self.webhooks = WebhookMetrics(r)

    def instrument(self, app) -> None:
        """HTTP requests by route and status, and their latency."""
        app.add_middleware(HttpMetrics, metrics=self)

    def _counters(self) -> bytes:
        path = multiprocess_dir()
        if not path:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        return generate_latest(registry)

    async def scrape(self, redis, catalog, live_workers: list[dict]) -> bytes:
        """Read queue and job state from Redis, then render with every process's counters. A Redis
        outage shows as `fresco_redis_up 0`, not as a failed scrape."""
        depth = GaugeMetricFamily("fresco_queue_depth",
                                  "Jobs waiting in the task's RQ queue, read from Redis at scrape time.",
                                  labels=["task"])
        jobs = GaugeMetricFamily("fresco_jobs",
                                 "Jobs stored in Redis by task and status (terminal ones until they expire).",
                                 labels=["task", "status"])
        oldest = GaugeMetricFamily("fresco_queue_oldest_age_seconds",
                                   "Age of the oldest queued job per task (0 when none).", labels=["task"])
        live = GaugeMetricFamily("fresco_workers_live", "Workers with a fresh heartbeat serving the task.",
                                 labels=["task"])
        up = GaugeMetricFamily("fresco_redis_up", "1 when the last scrape could read Redis.")
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for task in TASK_NAMES:
                    for model in catalog.models_for(task):
                        pipe.llen(keys.rq_queue(task, model))
                    pipe.zrange(keys.status_index(task, JobStatus.QUEUED), 0, 0, withscores=True)
                    for status in JobStatus:
                        pipe.zcard(keys.status_index(task, status))
                pipe.zcard(keys.WEBHOOKS_DUE)
                replies = await pipe.execute()
            at = now()
            replies = iter(replies)
            for task in TASK_NAMES:
                queued = sum(next(replies) for _ in catalog.models_for(task))
                first = next(replies)
                counts = [next(replies) for _ in JobStatus]
                depth.add_metric([task], queued)
                oldest.add_metric([task], max(0.0, at - first[0][1]) if first else 0.0)
                for status, count in zip(JobStatus, counts):
                    jobs.add_metric([task, status], count)
                live.add_metric([task], sum(1 for w in live_workers if task in w.get("tasks", [])))
            up.add_metric([], 1)
            families = [depth, jobs, oldest, live, pending_family(next(replies)), up]
        except Exception:
            up.add_metric([], 0)
            families = [up]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Live(families))
        return self._counters() + generate_latest(registry)
