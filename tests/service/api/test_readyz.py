"""What /readyz says about the tasks (service/api/routes/health.py `readiness`): a task is missing only when no
live worker serves it with any of its models; a default model no worker serves is named, as a warning."""

from __future__ import annotations

from service.api.routes.health import readiness
from service.catalog import tiny_catalog
from service.jobs.heartbeats import serves

CATALOG = tiny_catalog()


def test_a_task_served_only_by_another_model_is_ready_and_its_default_is_named():
    # FRESCO_WORKER_MODELS=tiny-pai: every task tiny-pai serves, but none with its default.
    served = {serves(t, "tiny-pai") for t in CATALOG.spec("tiny-pai").tasks}
    served |= {serves(t, m) for t, m in CATALOG.defaults.items() if t not in CATALOG.spec("tiny-pai").tasks}
    body = readiness(CATALOG, served)
    assert body["missing_tasks"] == []
    assert sorted(body["unserved_defaults"], key=lambda d: d["task"]) == [
        {"task": t, "model": CATALOG.defaults[t]} for t in sorted(CATALOG.spec("tiny-pai").tasks)]


def test_a_task_no_worker_serves_is_missing_with_its_default():
    served = {serves(t, m) for t, m in CATALOG.defaults.items() if t != "svd"}
    assert readiness(CATALOG, served) == {"missing_tasks": ["svd"],
                                          "unserved_defaults": [{"task": "svd", "model": "tiny-svd"}]}


def test_a_model_this_catalogue_does_not_have_serves_nothing():
    served = {serves(t, m) for t, m in CATALOG.defaults.items() if t != "turbo"} | {"turbo/someone-elses-model"}
    assert readiness(CATALOG, served)["missing_tasks"] == ["turbo"]


def test_all_defaults_served_is_ready_with_no_warning():
    assert readiness(CATALOG, {serves(t, m) for t, m in CATALOG.defaults.items()}) == {
        "missing_tasks": [], "unserved_defaults": []}
