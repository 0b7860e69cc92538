"""Resident models: a worker loads its models once, at start, and no job loads one again (the model
loader and diffusers' `from_pretrained` are booby-trapped once the worker is up; the worker's
`fresco_model_loads_total` does not move). Memory over 500 jobs is bench/memory.py's to show."""

from __future__ import annotations

import pytest

from bench.common import stop_embedded
from service.catalog import tiny_catalog
from service.redis_conn import EmbeddedRedis, sync_client
from service.storage import LocalStorage
from tests.workers.harness import job, pop_and_run, settings, submit, turbo
from workers import metrics


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = EmbeddedRedis(tmp_path_factory.mktemp("resident-redis"))
    yield s
    stop_embedded(s)


def loads() -> dict[str, float]:
    return {s.labels["model"]: s.value for family in metrics.REGISTRY.collect() if family.name == "fresco_model_loads"
            for s in family.samples if s.name.endswith("_total")}


def test_no_job_loads_a_model(server, tmp_path, monkeypatch):
    import diffusers

    import workers.jobs
    import workers.models
    from workers.jobs import Runtime

    r = sync_client(server.url)
    before = loads()
    runtime = Runtime(settings(server.url, tmp_path), tiny_catalog(), r, LocalStorage(tmp_path / "results"),
                      "resident-test").load()
    at_start = loads()
    assert at_start.get("tiny-turbo", 0) - before.get("tiny-turbo", 0) == 1

    def trap(*args, **kwargs):
        raise AssertionError("a model was loaded during a job")

    monkeypatch.setattr(workers.models, "load_model", trap)
    monkeypatch.setattr(workers.jobs, "load_model", trap)
    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", trap)
    monkeypatch.setattr(diffusers.AutoencoderKL, "from_pretrained", trap)
    monkeypatch.setattr(diffusers.UNet2DConditionModel, "from_pretrained", trap)
    ids = [submit(r, "turbo", "tiny-turbo", turbo(seed)) for seed in range(10)]
    while pop_and_run(runtime, r, "turbo", "tiny-turbo") is not None:
        pass
    assert [job(r, i)["status"] for i in ids] == ["succeeded"] * 10
    assert loads() == at_start
