"""Webhook metrics, `fresco_webhook_` prefix: what the dispatcher did (counters and the lag histogram,
in the registry of the process that runs it: the API's, summed over its processes as
service/api/metrics.py does, or `fresco webhooks`' own /metrics), and how many deliveries are pending,
read from Redis at scrape time (so any process's scrape says the same)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from service.jobs import keys

LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
# An attempt's result: the answer's class, or why there was none.
RESULTS = ("success", "redirect", "client_error", "throttled", "server_error", "timeout", "connection_error",
           "blocked")


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.deliveries = Counter(
            "fresco_webhook_deliveries_total", "Webhook deliveries settled: delivered (a 2xx answer) or gave_up "
            "(an answer that is not retried, or retried past FRESCO_WEBHOOK_RETRY_FOR_S).", ["outcome"],
            registry=registry)
        self.attempts = Counter(
            "fresco_webhook_attempts_total", "Webhook delivery attempts by result: success (2xx), redirect (3xx, "
            "not followed), client_error (4xx but 429), throttled (429), server_error (5xx), timeout, "
            "connection_error, blocked (the URL now resolves to an address not allowed).", ["result"],
            registry=registry)
        self.lag = Histogram(
            "fresco_webhook_delivery_lag_seconds", "From the event (the job's transition) to its delivery's 2xx.",
            buckets=LAG_BUCKETS, registry=registry)
        # Gauges of the dispatcher's own: summed (in flight) or the most (keys at cap) over the API's processes.
        self.in_flight = Gauge(
            "fresco_webhook_attempts_in_flight", "Webhook deliveries this process's dispatcher has taken and not "
            "settled yet (at most FRESCO_WEBHOOK_MAX_IN_FLIGHT per dispatcher).", registry=registry,
            multiprocess_mode="livesum")
        self.keys_at_cap = Gauge(
            "fresco_webhook_keys_at_cap", "API keys whose due webhook deliveries waited, at the dispatcher's last "
            "look, because the key had FRESCO_WEBHOOK_MAX_IN_FLIGHT_PER_KEY in flight.", registry=registry,
            multiprocess_mode="livemax")


def pending_family(count: int) -> GaugeMetricFamily:
    family = GaugeMetricFamily("fresco_webhook_deliveries_pending",
                               "Webhook deliveries not yet delivered or given up (due, waiting to retry, in flight), "
                               "read from Redis at scrape time.")
    family.add_metric([], count)
    return family


class PendingCollector:
    """The pending gauge for a registry served by prometheus_client's own HTTP server (a sync client)."""

    def __init__(self, redis):
        self.redis = redis

    def describe(self):
        return [pending_family(0)]

    def collect(self):
        try:
            yield pending_family(self.redis.zcard(keys.WEBHOOKS_DUE))
        except Exception:  # Redis away: no sample rather than a failed scrape
            return
