"""A real Prometheus server scrapes a running Fresco (API and worker) and loads the alert rules; every
dashboard query and every KEDA Prometheus trigger then runs through its query API and finds series."""

from __future__ import annotations

import re
import subprocess
import time

import httpx
import pytest
import yaml

from service.tasks import TASK_NAMES
from tests.conftest import free_port, wait_status
from tests.deploy.conftest import DEPLOY, tool
from tests.deploy.test_dashboard import GPU_METRICS, dashboard_targets, metric_names

RULES = DEPLOY / "prometheus" / "rules" / "fresco-alerts.yml"
# Panels whose series only appear when something happens that a CPU test run cannot make happen.
MAY_BE_EMPTY = {
    "GPU memory per worker": "CPU workers export the GPU families without samples",
    "GPU out-of-memory failures": "no job ran out of GPU memory in this run",
}


def promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables as the dashboard's defaults would set them."""
    return expr.replace("$task", ".*").replace("$__rate_interval", "1m").replace("$__range", "5m")


@pytest.fixture(scope="module")
def prometheus(exercised, tmp_path_factory):
    binary = tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "fresco-api", "static_configs": [{"targets": [exercised.url.removeprefix("http://")]}]},
            {"job_name": "fresco-worker", "static_configs": [
                {"targets": [f"127.0.0.1:{p}" for p in exercised.worker_metrics_ports]}]},
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(work / "prometheus.log", "wb")
    proc = subprocess.Popen([binary, f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--web.enable-lifecycle"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            assert proc.poll() is None, (work / "prometheus.log").read_text()[-3000:]
            try:
                if httpx.get(base + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "Prometheus did not become ready"
            time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=10) as api:
            wait_for(lambda: targets_up(api) == {"fresco-api", "fresco-worker"}, "both targets up")
            time.sleep(2.5)  # a few scrapes before the next jobs, so rates see them
            with exercised.client() as client:
                for body in ({"task": "turbo", "prompt": "x", "width": 256, "height": 256},
                             {"task": "img2img", "prompt": "x", "steps": 2, "image": png()}):
                    job_id = client.post("/generate", json=body).json()["id"]
                    assert wait_status(client, job_id, {"succeeded", "failed", "canceled"})["status"] == "succeeded"
            time.sleep(2.5)  # and a few after
            yield api
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def png() -> str:
    from tests.conftest import png_data_url

    return png_data_url(256, 256)


def wait_for(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def targets_up(api: httpx.Client) -> set[str]:
    active = api.get("/api/v1/targets").json()["data"]["activeTargets"]
    return {t["labels"]["job"] for t in active if t["health"] == "up"}


def query(api: httpx.Client, expr: str) -> list:
    body = api.get("/api/v1/query", params={"query": expr}).json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def test_prometheus_scrapes_api_and_worker(prometheus):
    up = query(prometheus, "up")
    assert {r["metric"]["job"]: r["value"][1] for r in up} == {"fresco-api": "1", "fresco-worker": "1"}


def test_every_dashboard_query_returns_series(prometheus):
    empty = []
    for panel, expr in dashboard_targets():
        result = query(prometheus, promql(expr))
        if not result and panel not in MAY_BE_EMPTY:
            empty.append(f"{panel}: {expr}")
    assert not empty, "dashboard queries with no series:\n" + "\n".join(empty)


def test_every_dashboard_metric_has_series_in_prometheus(prometheus):
    names = {name for _, expr in dashboard_targets() for name in metric_names(expr)}
    missing = []
    for name in sorted(names):
        series = prometheus.get("/api/v1/series", params={"match[]": name}).json()["data"]
        if not series and name not in GPU_METRICS:
            missing.append(name)
    assert not missing, f"dashboard metrics Prometheus has no series for: {missing}"
    # The GPU families have no samples on a CPU worker, but Prometheus saw them in the scrape.
    metadata = prometheus.get("/api/v1/metadata").json()["data"]
    for name in GPU_METRICS & names:
        assert name in metadata and metadata[name][0]["type"] == "gauge", name


def test_live_values_match_the_run(prometheus):
    finished = query(prometheus, 'sum by (task) (fresco_jobs_finished_total{outcome="succeeded"})')
    assert {r["metric"]["task"] for r in finished} >= {"turbo", "sdxl", "img2img", "svd"}
    phases = query(prometheus, "sum by (phase) (fresco_job_phase_seconds_count)")
    assert {r["metric"]["phase"] for r in phases} == {"queue_wait", "inference", "encode", "store"}
    live = query(prometheus, "max by (task) (fresco_workers_live)")
    assert {r["metric"]["task"]: r["value"][1] for r in live} == {task: "1" for task in TASK_NAMES}  # one worker, all
    throughput = query(prometheus, 'sum(rate(fresco_jobs_finished_total{task="turbo"}[1m]))')
    assert float(throughput[0]["value"][1]) > 0


def test_alert_rules_load_and_evaluate(prometheus):
    expected = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}

    def evaluated():
        groups = prometheus.get("/api/v1/rules").json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None

    wait_for(lambda: evaluated() is not None, "every rule evaluated once")
    rules = evaluated()
    assert {r["name"] for r in rules} == expected
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken
    # A healthy stack: no alert even pending (its condition true), though /readyz answered 503
    # while the stack started.
    active = {r["name"]: r["state"] for r in rules if r["state"] != "inactive"}
    assert not active


def test_keda_prometheus_triggers_query_real_series(prometheus):
    """The ScaledObjects' queries, less the namespace matcher that only Kubernetes scrapes add (and the pod
    matcher of the groups that count their busy workers, and their `or vector(0)`, so that a real series
    must answer, not the fallback)."""
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "keda.yaml").read_text()))
    queries = [t["metadata"]["query"] for d in docs for t in d["spec"]["triggers"] if t["type"] == "prometheus"]
    assert len(queries) == 6  # a query per worker group
    for q in queries:
        local = re.sub(r'namespace="[^"]*",\s*', "", q)
        assert local != q
        local = re.sub(r'\{pod=~"[^"]*"\}', "", local).removesuffix(" or vector(0)")
        result = query(prometheus, local)
        assert len(result) == 1 and float(result[0]["value"][1]) >= 0, (q, result)
