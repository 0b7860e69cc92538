"""workers/jobs.py: the RQ entry point is where the API's jobs say it is, and one table maps what went
wrong to how a job ends. (Whole jobs through the runner: test_batching.py, test_runtime.py; in real
worker processes: tests/e2e and tests/faults.)"""

from __future__ import annotations

import importlib
import uuid

import pytest
import torch
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException

import workers.jobs
from service.catalog import tiny_catalog
from service.jobs import keys, protocol
from service.jobs.states import ErrorCode
from service.settings import Settings
from tests.workers.harness import job, make_runner, pop_and_run, submit, turbo
from workers.jobs import STICKY, UNEXPECTED, JobFailed, failure_for


def test_the_rq_entry_point_is_run_job(module_redis):
    module, _, name = keys.RQ_ENTRY_POINT.rpartition(".")
    assert getattr(importlib.import_module(module), name) is workers.jobs.run_job
    job_id = str(uuid.uuid4())
    protocol.submit(job_id, "turbo", "m", {}, owner=None, retries=0, timeout_s=60, cap=0).run(module_redis)
    assert Job.fetch(job_id, connection=module_redis, serializer=JSONSerializer).func is workers.jobs.run_job


def test_run_job_outside_a_worker_says_so(monkeypatch):
    monkeypatch.setattr(workers.jobs, "_RUNNER", None)
    with pytest.raises(RuntimeError, match="inside a Fresco worker"):
        workers.jobs.run_job({"id": "x", "task": "turbo", "model": "m"})


SETTINGS = Settings(job_timeout_s={"svd": 1800})


@pytest.mark.parametrize("exc, code, message, restart", [
    (JobTimeoutException("alarm"), ErrorCode.TIMEOUT, "the job ran past the svd timeout of 1800 s", False),
    (torch.cuda.OutOfMemoryError("CUDA out of memory"), ErrorCode.GPU_OOM,
     "the GPU ran out of memory; try a smaller size", False),
    (JobFailed(ErrorCode.INVALID_INPUT, "no such model here"), ErrorCode.INVALID_INPUT, "no such model here", False),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), ErrorCode.INTERNAL,
     STICKY.message, True),
    (ValueError("a bug"), ErrorCode.INTERNAL, UNEXPECTED.message, False),
])
def test_failures_map_to_outcomes(exc, code, message, restart):
    failure = failure_for(exc, "svd", SETTINGS)
    assert (failure.code, failure.message, failure.restart) == (code, message, restart)


def test_an_oom_message_is_not_taken_for_a_sticky_error():
    assert not failure_for(RuntimeError("CUDA error: out of memory; illegal memory access"), "svd", SETTINGS).restart


@pytest.fixture(scope="module")
def runner(module_server, tmp_path_factory):
    return make_runner(module_server.url, tmp_path_factory.mktemp("jobs-data"), "jobs-test", tiny_catalog(),
                       fault_injection=True)


def test_a_failing_pipeline_fails_the_job_and_the_runner_goes_on(runner):
    redis = runner.redis
    oom = submit(redis, "turbo", "tiny-turbo", turbo(1, prompt="fresco-fault:oom"))
    fine = submit(redis, "turbo", "tiny-turbo", turbo(2))
    assert pop_and_run(runner, redis, "turbo", "tiny-turbo") == {"status": "failed"}
    assert pop_and_run(runner, redis, "turbo", "tiny-turbo") == {"status": "succeeded"}
    assert job(redis, oom)["error"]["code"] == "gpu_oom" and job(redis, fine)["status"] == "succeeded"
    assert runner.current_jobs == []


def test_a_job_for_a_model_this_worker_has_not_loaded_fails_as_invalid_input(runner):
    redis = runner.redis
    job_id = submit(redis, "turbo", "not-loaded", turbo(3))
    assert pop_and_run(runner, redis, "turbo", "not-loaded") == {"status": "failed"}
    assert job(redis, job_id)["error"] == {"code": "invalid_input",
                                           "message": "this worker does not serve model not-loaded for turbo"}


def test_a_job_gone_before_it_starts_is_skipped(runner):
    redis = runner.redis
    job_id = submit(redis, "turbo", "tiny-turbo", turbo(4))
    redis.delete(keys.job(job_id))
    assert pop_and_run(runner, redis, "turbo", "tiny-turbo") == {"status": "missing"}
    canceled = submit(redis, "turbo", "tiny-turbo", turbo(5))
    protocol.cancel(canceled, "turbo", "tiny-turbo", ttl=60).run(redis)
    assert runner.run({"id": canceled, "task": "turbo", "model": "tiny-turbo"}) == {"status": "skipped"}


def test_a_full_collection_runs_after_a_failure_only(runner, monkeypatch):
    """After a failed call the traceback's tensors must go (gc, then the CUDA cache); after a job that
    ended well a full collection is ~0.25 s of the worker's time for nothing."""
    import gc

    collections = []
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(1) or 0)
    redis = runner.redis
    submit(redis, "turbo", "tiny-turbo", turbo(6))
    assert pop_and_run(runner, redis, "turbo", "tiny-turbo") == {"status": "succeeded"} and collections == []
    submit(redis, "turbo", "tiny-turbo", turbo(7, prompt="fresco-fault:oom"))
    assert pop_and_run(runner, redis, "turbo", "tiny-turbo") == {"status": "failed"} and collections == [1]
