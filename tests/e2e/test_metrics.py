"""Metrics from the API and the worker parse with prometheus_client's parser and carry the first set."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.catalog import tiny_catalog
from service.tasks import TASK_NAMES
from tests.conftest import wait_status


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family, **labels):
    return [s for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())]


def test_api_metrics(client):
    job = client.post("/generate", json={"task": "turbo", "prompt": "x", "width": 256, "height": 256}).json()
    wait_status(client, job["id"], {"succeeded"})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    fams = families(r.text)
    assert samples(fams["fresco_jobs_submitted"], task="turbo")[0].value >= 1
    assert {s.labels["task"] for s in fams["fresco_queue_depth"].samples} == set(TASK_NAMES)
    assert samples(fams["fresco_jobs"], task="turbo", status="succeeded")[0].value >= 1
    assert fams["fresco_redis_up"].samples[0].value == 1
    assert samples(fams["fresco_workers_live"], task="svd")[0].value >= 1
    http = fams["fresco_http_requests"]  # by route and status, from the instrumentation library
    assert samples(http, handler="/generate", status="202")
    assert "fresco_http_request_duration_seconds" in fams


def test_worker_metrics(stack, client):
    job = client.post("/generate", json={"task": "turbo", "prompt": "x", "width": 256, "height": 256}).json()
    wait_status(client, job["id"], {"succeeded"})
    text = httpx.get(f"http://127.0.0.1:{stack.worker_metrics_ports[0]}/metrics").text
    fams = families(text)
    phases = {s.labels["phase"] for s in fams["fresco_job_phase_seconds"].samples if s.name.endswith("_count")}
    assert phases == {"queue_wait", "inference", "encode", "store"}
    assert samples(fams["fresco_jobs_finished"], task="turbo", outcome="succeeded")[0].value >= 1
    loads = {s.labels["model"] for s in fams["fresco_model_load_seconds"].samples}
    # every model, loaded at start; upscalers are loaded by the upscale task's pipeline, not as models
    assert loads == {n for n, spec in tiny_catalog().models.items() if spec.kind != "upscaler"}
