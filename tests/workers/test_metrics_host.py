"""The worker's /metrics and `fresco webhooks --metrics-port` listen where FRESCO_HOST (or FRESCO_METRICS_HOST)
says, not on every interface."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry

from service.settings import Settings
from service.webhooks.standalone import serve_metrics
from tests.stack import free_port
from workers import metrics


def test_metrics_listen_on_the_api_host_unless_told_otherwise():
    assert Settings(host="127.0.0.1").metrics_listen_host == "127.0.0.1"
    assert Settings(host="127.0.0.1", metrics_host="0.0.0.0").metrics_listen_host == "0.0.0.0"


def assert_serves_on_loopback_only(server, metric: str) -> None:
    """`server` listens on 127.0.0.1 (not every interface) and serves `metric`; then it is shut down."""
    try:
        assert server.server_address[0] == "127.0.0.1"
        assert metric in httpx.get(f"http://127.0.0.1:{server.server_address[1]}/metrics").text
    finally:
        server.shutdown()
        server.server_close()


def test_worker_metrics_bind_the_host_given():
    assert metrics.serve(0, "127.0.0.1") is None
    assert_serves_on_loopback_only(metrics.serve(free_port(), "127.0.0.1"), "fresco_jobs_finished_total")


def test_standalone_dispatcher_metrics_bind_the_host_given(redis_url):
    registry = CollectorRegistry(auto_describe=True)
    assert serve_metrics(registry, redis_url, 0, "127.0.0.1") is None
    assert_serves_on_loopback_only(serve_metrics(registry, redis_url, free_port(), "127.0.0.1"),
                                   "fresco_webhook_deliveries_pending")
