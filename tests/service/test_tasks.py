"""service/tasks.py: the task table is what everything per task reads. Adding a task is a row there that
names its request schema (service/api/schemas.py), its rule function (service/api/rules.py) and its
pipeline (workers/pipelines/<task>.py); which kinds serve it is the family table's (service/families.py),
and how each family runs its mode, the family files' (workers/families/). Each test here enumerates the
tables, so a row without one of its parts fails."""

from __future__ import annotations

import pytest

from service.api.requests import IMAGE_FIELDS, REQUESTS, generate_adapter, takes_image
from service.api.resolve import RULES
from service.catalog import ModelSpec, tiny_catalog
from service.families import FAMILIES, KINDS, tasks_for_kind
from service.settings import Settings
from service.tasks import GENERATE_TASKS, TASK_NAMES, TASKS, by_priority, load
from tests.conftest import ROOT


def test_the_table_lists_the_contracts_tasks_in_order():
    # v1, then v1.1's, v1.2's
    assert TASK_NAMES == ("sdxl", "turbo", "img2img", "svd", "txt2img", "inpaint", "upscale", "train")
    assert by_priority(TASK_NAMES) == ["turbo", "upscale", "img2img", "inpaint", "txt2img", "sdxl", "svd",
                                       "train"]  # short jobs first
    assert GENERATE_TASKS == TASK_NAMES[:-1]  # a training job comes through POST /train
    assert len({t.priority for t in TASKS.values()}) == len(TASKS)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_has_a_request_schema_that_matches_its_row(task):
    schema = load(TASKS[task].request)
    assert REQUESTS[task] is schema
    fields = schema.model_fields
    assert fields["task"].annotation.__args__ == (task,)
    assert ("scheduler" in fields) == TASKS[task].schedulers
    assert ("loras" in fields) == TASKS[task].adapters
    assert ("control" in fields) == TASKS[task].control == ("control[].image" in IMAGE_FIELDS[task])
    assert ("image" in fields) == takes_image(task) == ("image" in IMAGE_FIELDS[task])
    if TASKS[task].output != "adapter":  # a training job's validation images are PNGs
        assert fields["output_format"].default == ("mp4" if TASKS[task].output == "video" else "png")
    assert list(REQUESTS) == list(TASK_NAMES)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_has_its_rule_function_and_its_pipeline(task):
    from workers.pipelines.registry import PIPELINES

    assert RULES[task] is load(TASKS[task].rules) and callable(RULES[task])
    assert PIPELINES[task] is load(TASKS[task].pipeline) and PIPELINES[task].task == task
    module = TASKS[task].pipeline.partition(":")[0]
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
    assert list(PIPELINES) == list(RULES) == list(TASK_NAMES)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_is_served_by_the_tiny_profile_and_its_facts_exist(task):
    catalog = tiny_catalog()
    assert catalog.models_for(task) and catalog.default_for(task) in catalog.models_for(task)
    kinds = [kind for kind, row in KINDS.items() if task in row.tasks]
    assert kinds
    for kind in kinds:
        assert task in tasks_for_kind(kind)
        spec = ModelSpec(name="x", kind=kind, source=KINDS[kind].tiny_sources[0])
        assert set(TASKS[task].model_facts) <= set(spec.facts())


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_runs_each_of_its_tasks_through_its_family_file(kind):
    """A kind's tasks exist, and its family's file has a pipeline class for each task's mode (and for its
    ControlNet pipelines where the family takes ControlNets), which diffusers has."""
    import diffusers

    from workers.families import FAMILIES as WORKER_FAMILIES

    row = KINDS[kind]
    if row.upscaler:  # no diffusers pipeline: workers/upscalers.py loads its weights (spandrel), any family
        assert row.tasks == ("upscale",) and row.family in FAMILIES and row.family not in WORKER_FAMILIES
        return
    family = WORKER_FAMILIES[row.family]
    assert row.family in FAMILIES and family.name == row.family
    for task in row.tasks:
        assert task in TASKS
        modes = [TASKS[task].mode] + ([f"control:{TASKS[task].mode}"] if TASKS[task].control and
                                      FAMILIES[row.family].control else [])
        for mode in modes:
            assert hasattr(diffusers, family.pipelines[mode]), (kind, task, mode)
    assert family.loads_as in family.pipelines
    assert "refiner" in family.pipelines or not row.refiner


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
    assert sorted(tags) == sorted(GENERATE_TASKS)
    with pytest.raises(SystemExit):
        main(["generate", "not-a-task"])
    error = capsys.readouterr().err
    assert "invalid choice: 'not-a-task'" in error
    assert "(choose from " + ", ".join(f"'{t}'" for t in GENERATE_TASKS) + ")" in error


def test_get_models_lists_every_task(api):
    body = api.get("/models").json()
    assert list(body["tasks"]) == list(TASK_NAMES)
    for name, task in TASKS.items():
        info = body["tasks"][name]
        assert ("schedulers" in info) == task.schedulers
        assert ("max_image_bytes" in info["limits"]) == (takes_image(name) or task.output == "adapter")
        for entry in info["models"]:
            assert set(task.model_facts) <= set(entry)
