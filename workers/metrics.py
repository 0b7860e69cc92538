"""Worker metrics, served on the worker's own /metrics port. `fresco_` prefix, base units."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

PHASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

JOB_PHASE_SECONDS = Histogram(
    "fresco_job_phase_seconds", "Time a job spent in each phase: queue_wait, inference, encode, store.",
    ["task", "phase"], buckets=PHASE_BUCKETS, registry=REGISTRY)
JOBS_FINISHED = Counter(
    "fresco_jobs_finished_total", "Jobs this worker ended, by outcome (succeeded, failed code, canceled).",
    ["task", "outcome"], registry=REGISTRY)
MODEL_LOAD_SECONDS = Gauge(
    "fresco_model_load_seconds", "Seconds the model took to load at worker start.", ["model"], registry=REGISTRY)
MODEL_LOADS = Counter("fresco_model_loads_total", "Models loaded by this worker.", ["model"], registry=REGISTRY)
BUSY = Gauge("fresco_worker_busy", "1 while the worker runs a job.", registry=REGISTRY)


def serve(port: int) -> None:
    if port:
        start_http_server(port, registry=REGISTRY)
