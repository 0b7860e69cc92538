"""`fresco webhooks`: a webhook dispatcher alone, for deployments that keep delivery apart from the API
processes (run those with FRESCO_WEBHOOK_DISPATCHER=false) or want more dispatchers than API processes.
Any number may run at once, beside the API's own: they share the outbox. Stops cleanly on SIGTERM or
SIGINT; a delivery in flight then is due again when its lease ends."""

from __future__ import annotations

import asyncio
import logging
import signal

from prometheus_client import CollectorRegistry, start_http_server

from service.redis import async_client, sync_client, url_or_embedded
from service.settings import Settings
from service.webhooks.dispatcher import Dispatcher
from service.webhooks.metrics import PendingCollector, WebhookMetrics

log = logging.getLogger("fresco.webhooks")


def serve_metrics(registry: CollectorRegistry, redis_url: str, port: int, host: str):
    """/metrics on `host`:`port` (settings.metrics_listen_host: the API's host unless FRESCO_METRICS_HOST says
    otherwise, never every interface by default), with the pending deliveries read from Redis at scrape time;
    the server, or None when `port` is 0."""
    if not port:
        return None
    registry.register(PendingCollector(sync_client(redis_url)))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


async def serve(settings: Settings, *, metrics_port: int = 0) -> int:
    """Deliver webhooks until a stop signal; `metrics_port`: serve /metrics there (0: none)."""
    url, embedded = url_or_embedded(settings)
    redis = async_client(url)
    registry = CollectorRegistry(auto_describe=True)
    metrics = WebhookMetrics(registry)
    metrics_server = serve_metrics(registry, url, metrics_port, settings.metrics_listen_host)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    dispatcher = Dispatcher(redis, settings, metrics)
    dispatcher.start()
    log.info("delivering webhooks (metrics on %s)", f"{settings.metrics_listen_host}:{metrics_port}" if metrics_server
             else "off")
    try:
        await stopping.wait()
    finally:
        await dispatcher.stop()
        if metrics_server:
            metrics_server.shutdown()
        await redis.aclose()
        if embedded:
            embedded.close()
    log.info("stopped")
    return 0
