"""Resident models: a worker loads its models once, at start, and no job loads one again (the model
loader and diffusers' `from_pretrained` are booby-trapped once the worker is up; the worker's
`fresco_model_loads_total` does not move). Memory over 500 jobs is bench/memory.py's to show."""

from __future__ import annotations

from service.catalog import tiny_catalog
from service.redis import sync_client
from service.storage import LocalStorage
from tests.workers.harness import job, pop_and_run, settings, submit, turbo
from workers import metrics


def loads() -> dict[str, float]:
    return {s.labels["model"]: s.value for family in metrics.REGISTRY.collect() if family.name == "fresco_model_loads"
            for s in family.samples if s.name.endswith("_total")}


def test_no_job_loads_a_model(module_server, tmp_path, monkeypatch):
    import diffusers

    import workers.models
    import workers.runtime
    from workers.jobs import JobRunner
    from workers.runtime import Runtime

    r = sync_client(module_server.url)
    before = loads()
    s = settings(module_server.url, tmp_path)
    runner = JobRunner(Runtime(s, tiny_catalog()).load(), r, LocalStorage(tmp_path / "results"), s, "resident-test")
    at_start = loads()
    assert at_start.get("tiny-turbo", 0) - before.get("tiny-turbo", 0) == 1

    def trap(*args, **kwargs):
        raise AssertionError("a model was loaded during a job")

    monkeypatch.setattr(workers.models, "load_model", trap)
    monkeypatch.setattr(workers.runtime, "load_model", trap)
    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", trap)
    monkeypatch.setattr(diffusers.AutoencoderKL, "from_pretrained", trap)
    monkeypatch.setattr(diffusers.UNet2DConditionModel, "from_pretrained", trap)
    ids = [submit(r, "turbo", "tiny-turbo", turbo(seed)) for seed in range(10)]
    while pop_and_run(runner, r, "turbo", "tiny-turbo") is not None:
        pass
    assert [job(r, i)["status"] for i in ids] == ["succeeded"] * 10
    assert loads() == at_start
