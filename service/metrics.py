"""API metrics: HTTP requests (prometheus-fastapi-instrumentator), jobs submitted, and queue state
read from Redis at scrape time. Names follow Prometheus conventions with the `fresco_` prefix."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_fastapi_instrumentator import Instrumentator

from service import jobstore as js
from service.catalog import TASKS


class ApiMetrics:
    """One registry per app, so several apps (tests, several API processes' views) never collide."""

    def __init__(self):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.jobs_submitted = Counter(
            "fresco_jobs_submitted_total", "Jobs accepted by POST /generate.", ["task"], registry=r)
        self.queue_depth = Gauge(
            "fresco_queue_depth", "Jobs waiting in the task's RQ queue, read from Redis at scrape time.",
            ["task"], registry=r)
        self.jobs = Gauge(
            "fresco_jobs", "Jobs stored in Redis by task and status (terminal ones until they expire).",
            ["task", "status"], registry=r)
        self.oldest_queued = Gauge(
            "fresco_queue_oldest_age_seconds", "Age of the oldest queued job per task (0 when none).",
            ["task"], registry=r)
        self.live_workers = Gauge(
            "fresco_workers_live", "Workers with a fresh heartbeat serving the task.", ["task"], registry=r)
        self.redis_up = Gauge("fresco_redis_up", "1 when the last scrape could read Redis.", registry=r)

    def instrument(self, app) -> None:
        """HTTP requests by route and status, and their latency, via the maintained library."""
        Instrumentator(
            should_group_status_codes=False,
            should_ignore_untemplated=True,
            excluded_handlers=["/metrics"],
            registry=self.registry,
        ).instrument(app, metric_namespace="fresco")

    async def scrape(self, redis, catalog, live_workers: list[dict]) -> bytes:
        """Read queue and job state from Redis, then render. A Redis outage shows as
        `fresco_redis_up 0`, not as a failed scrape."""
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for task in TASKS:
                    for model in catalog.models_for(task):
                        pipe.llen(js.rq_queue_key(task, model))
                    pipe.zrange(js.state_key(task, "queued"), 0, 0, withscores=True)
                    for status in js.STATUSES:
                        pipe.zcard(js.state_key(task, status))
                replies = await pipe.execute()
            now = js.now()
            replies = iter(replies)
            for task in TASKS:
                depth = sum(next(replies) for _ in catalog.models_for(task))
                oldest = next(replies)
                counts = [next(replies) for _ in js.STATUSES]
                self.queue_depth.labels(task).set(depth)
                self.oldest_queued.labels(task).set(max(0.0, now - oldest[0][1]) if oldest else 0.0)
                for status, count in zip(js.STATUSES, counts):
                    self.jobs.labels(task, status).set(count)
                self.live_workers.labels(task).set(sum(1 for w in live_workers if task in w.get("tasks", [])))
            self.redis_up.set(1)
        except Exception:
            self.redis_up.set(0)
        return generate_latest(self.registry)
