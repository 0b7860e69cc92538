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


async def serve(settings: Settings, *, metrics_port: int = 0) -> int:
    """Deliver webhooks until a stop signal; `metrics_port`: serve /metrics there (0: none)."""
    url, embedded = url_or_embedded(settings)
    redis = async_client(url)
    registry = CollectorRegistry(auto_describe=True)
    metrics = WebhookMetrics(registry)
    if metrics_port:
        registry.register(PendingCollector(sync_client(url)))
        start_http_server(metrics_port, registry=registry)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    dispatcher = Dispatcher(redis, settings, metrics)
    dispatcher.start()
    log.info("delivering webhooks (metrics on :%s)", metrics_port or "off")
    try:
        await stopping.wait()
    finally:
        await dispatcher.stop()
        await redis.aclose()
        if embedded:
            embedded.close()
    log.info("stopped")
    return 0
