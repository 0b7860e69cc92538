"""The real tools from Debian's `prometheus` package: `promtool check metrics` on what a running API
and worker expose, `promtool check rules` and `promtool test rules` on the alert rules, and
`promtool check config` on the compose stack's Prometheus configuration."""

from __future__ import annotations

import subprocess

import yaml

from tests.deploy.conftest import DEPLOY, run_tool, scrape, tool

RULES = DEPLOY / "prometheus" / "rules" / "fresco-alerts.yml"


def check_metrics(text: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=30)


def test_promtool_accepts_the_api_metrics(exercised):
    text = scrape(exercised.url + "/metrics")
    result = check_metrics(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fresco_queue_depth" in text and "fresco_http_requests_total" in text


def test_promtool_accepts_the_worker_metrics(exercised):
    text = scrape(f"http://127.0.0.1:{exercised.worker_metrics_ports[0]}/metrics")
    result = check_metrics(text)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("fresco_job_phase_seconds_bucket", "fresco_jobs_finished_total", "fresco_model_load_seconds",
                 "fresco_gpu_memory_allocated_bytes", "fresco_gpu_memory_reserved_bytes"):
        assert name in text


def test_promtool_check_metrics_is_not_a_rubber_stamp():
    """The same check refuses a badly formed exposition, so the two passes above mean something."""
    result = check_metrics("# TYPE fresco_x counter\nfresco_x{a=\"1\"} not-a-number\n")
    assert result.returncode != 0


def test_alert_rules_check():
    result = run_tool(tool("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    rules = [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
    for alert in ("FrescoNoWorkerForTask", "FrescoQueueTooOld", "FrescoJobsStuckRunning", "FrescoGpuOutOfMemory"):
        assert alert in rules


def test_alert_rules_unit_tests():
    """Each alert fires on the series it is about, with the labels and annotations expected, and
    stays quiet on the others (deploy/prometheus/tests/fresco-alerts.test.yml)."""
    tests = DEPLOY / "prometheus" / "tests" / "fresco-alerts.test.yml"
    result = run_tool(tool("promtool"), "test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    tested = {t["alertname"] for case in yaml.safe_load(tests.read_text())["tests"] for t in case["alert_rule_test"]}
    rules = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert rules <= tested, f"alerts without a unit test: {sorted(rules - tested)}"


def test_compose_prometheus_config(tmp_path):
    """The compose stack's prometheus.yml, with its rule_files pointed at the rules in this tree."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]  # where docker-compose.yml mounts them
    config["rule_files"] = [str(RULES)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = run_tool(tool("promtool"), "check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["fresco-api"]["static_configs"][0]["targets"] == ["api:8000"]
    assert jobs["fresco-worker"]["dns_sd_configs"][0]["port"] == 9101
