"""service/tasks.py: the task table is what everything per task reads. Adding a task is a row there, a
request schema (service/api/schemas.py), a rule function (service/api/resolve.py) and a pipeline file
(workers/pipelines/<task>.py): each test here enumerates the table, so a row without one of them fails."""

from __future__ import annotations

import pytest

from service.api.resolve import RULES
from service.api.schemas import REQUESTS, generate_adapter
from service.catalog import ModelSpec, tiny_catalog
from service.settings import Settings
from service.tasks import TASK_NAMES, TASKS, by_priority, tasks_for_kind
from tests.conftest import ROOT


def test_the_table_lists_the_contracts_tasks_in_order():
    assert TASK_NAMES == ("sdxl", "turbo", "img2img", "svd", "txt2img")  # v1, then v1.1's
    assert by_priority(TASK_NAMES) == ["turbo", "img2img", "txt2img", "sdxl", "svd"]  # short jobs first
    assert len({t.priority for t in TASKS.values()}) == len(TASKS)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_has_a_request_schema_that_matches_its_row(task):
    schema = REQUESTS[task]
    fields = schema.model_fields
    assert fields["task"].annotation.__args__ == (task,)
    assert ("image" in fields) == TASKS[task].takes_image
    assert ("scheduler" in fields) == TASKS[task].schedulers
    assert fields["output_format"].default == ("mp4" if TASKS[task].output == "video" else "png")
    assert set(REQUESTS) == set(TASK_NAMES)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_has_resolve_rules_and_a_pipeline_file(task):
    from workers.pipelines.registry import PIPELINES

    assert task in RULES
    assert PIPELINES[task].task == task
    assert (ROOT / "workers" / "pipelines" / f"{task}.py").is_file()
    assert set(PIPELINES) == set(RULES) == set(TASK_NAMES)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_is_served_by_the_tiny_profile_and_its_facts_exist(task):
    catalog = tiny_catalog()
    assert catalog.models_for(task) and catalog.default_for(task) in catalog.models_for(task)
    for kind in TASKS[task].kinds:
        assert task in tasks_for_kind(kind)
    spec = ModelSpec(name="x", kind=TASKS[task].kinds[0], source="tiny")
    assert set(TASKS[task].model_facts) <= set(spec.facts())


def test_settings_take_their_per_task_defaults_from_the_table():
    s = Settings()
    assert s.job_timeout_s == {t: TASKS[t].timeout_s for t in TASK_NAMES}
    assert s.queue_cap == {t: TASKS[t].queue_cap for t in TASK_NAMES}
    assert s.worker_tasks == list(TASK_NAMES)
    partial = Settings(job_timeout_s={"svd": 30}, queue_cap={"turbo": 0})
    assert partial.job_timeout_s["svd"] == 30 and partial.job_timeout_s["sdxl"] == TASKS["sdxl"].timeout_s
    assert partial.queue_cap["turbo"] == 0 and partial.queue_cap["svd"] == TASKS["svd"].queue_cap
    with pytest.raises(ValueError, match="unknown task"):
        Settings(job_timeout_s={"txt2vid": 10})


def test_the_request_union_and_the_cli_offer_every_task(capsys):
    from service.cli import main

    tags = generate_adapter.json_schema()["discriminator"]["mapping"]
    assert sorted(tags) == sorted(TASK_NAMES)
    with pytest.raises(SystemExit):
        main(["generate", "not-a-task"])
    error = capsys.readouterr().err
    assert "invalid choice: 'not-a-task'" in error
    assert "(choose from " + ", ".join(f"'{t}'" for t in TASK_NAMES) + ")" in error


def test_get_models_lists_every_task(api):
    body = api.get("/models").json()
    assert list(body["tasks"]) == list(TASK_NAMES)
    for name, task in TASKS.items():
        info = body["tasks"][name]
        assert ("schedulers" in info) == task.schedulers
        assert ("max_image_bytes" in info["limits"]) == task.takes_image
        for entry in info["models"]:
            assert set(task.model_facts) <= set(entry)
