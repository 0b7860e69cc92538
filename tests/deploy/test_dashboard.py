"""The Grafana dashboard: well formed, provisioned the way docker-compose.yml mounts it, covering
what operators need, and every metric its queries name is really exported by a running API or worker."""

from __future__ import annotations

import json
import re

import yaml

from tests.deploy.conftest import DEPLOY, scrape

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "fresco.json"
GPU_METRICS = {"fresco_gpu_memory_allocated_bytes", "fresco_gpu_memory_reserved_bytes",
               "fresco_gpu_memory_max_allocated_bytes", "fresco_gpu_memory_total_bytes"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every query of every panel."""
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def metric_names(expr: str) -> set[str]:
    # Label values are quoted and never start a metric name; strip them before looking.
    return set(re.findall(r"\b(fresco_[a-z0-9_]+)\b", re.sub(r'"[^"]*"', '""', expr)))


def exported_names(text: str) -> set[str]:
    """Series names in a text exposition, and the names of families declared without samples."""
    names = set()
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_dashboard_is_well_formed():
    d = dashboard()
    assert d["uid"] == "fresco-overview" and d["title"] == "Fresco"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
    for p in panels():
        assert p["datasource"]["uid"] == "fresco-prometheus", p["title"]
        assert p["targets"] and len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "fresco-prometheus" and metric_names(t["expr"]), t
    (task,) = d["templating"]["list"]
    assert task["name"] == "task" and "fresco_queue_depth" in task["definition"]


def test_dashboard_covers_queue_latency_outcomes_throughput_and_gpu_memory():
    all_exprs = [expr for _, expr in dashboard_targets()]
    exprs = " ".join(all_exprs)
    assert "fresco_queue_depth" in exprs and "fresco_queue_oldest_age_seconds" in exprs
    assert any("by (phase, le)" in e and "fresco_job_phase_seconds_bucket" in e for e in all_exprs)
    assert any("by (outcome)" in e and "fresco_jobs_finished_total" in e for e in all_exprs)
    assert any("rate(fresco_jobs_finished_total" in e for e in all_exprs)
    assert {"fresco_gpu_memory_allocated_bytes", "fresco_gpu_memory_reserved_bytes"} <= metric_names(exprs)
    assert "fresco_workers_live" in exprs


def test_dashboard_is_provisioned_where_compose_mounts_it():
    compose = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if v.startswith("./"))
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "fresco.yml").read_text())
    assert mounts["./deploy/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == \
        provider["providers"][0]["options"]["path"] + "/" + DASHBOARD.name
    (source,) = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
                               .read_text())["datasources"]
    assert source["uid"] == "fresco-prometheus" and source["url"] == "http://prometheus:9090"


def test_every_dashboard_metric_is_exported_by_a_running_stack(exercised):
    api = exported_names(scrape(exercised.url + "/metrics"))
    worker = exported_names(scrape(f"http://127.0.0.1:{exercised.worker_metrics_ports[0]}/metrics"))
    missing = {}
    for title, expr in dashboard_targets():
        unknown = metric_names(expr) - api - worker
        if unknown:
            missing[title] = sorted(unknown)
    assert not missing, f"panels naming metrics that nothing exports: {missing}"
    assert GPU_METRICS <= worker  # declared by the worker even on a CPU (no samples there)


def test_alert_rules_name_only_exported_metrics(exercised):
    api = exported_names(scrape(exercised.url + "/metrics"))
    worker = exported_names(scrape(f"http://127.0.0.1:{exercised.worker_metrics_ports[0]}/metrics"))
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "fresco-alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            unknown = metric_names(rule["expr"]) - api - worker
            assert not unknown, (rule["alert"], unknown)
