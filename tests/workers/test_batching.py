"""Dynamic batching in the worker, in-process on a real Redis with the tiny Turbo pipeline: compatible
queued jobs run in one pipeline call and each keeps its own seed, result, progress and cancel; the
images are those the same jobs give alone; RQ's and Fresco's bookkeeping stay consistent; a job the
worker took off the queue itself survives that worker's death. A real worker process batching a burst
is tested in tests/bench/test_deployment.py."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.catalog import tiny_catalog
from service.jobs import keys, protocol
from service.jobs.states import JobStatus
from service.redis import async_client
from tests.workers.harness import image, job, make_runner, pop_and_run, same_pixels, settings, submit, turbo
from workers import metrics
from workers.batching import Member

TASK, MODEL = "turbo", "tiny-turbo"


@pytest.fixture(scope="module")
def runner(module_server, tmp_path_factory):
    """The job runner of a worker batching up to 4 images."""
    return make_runner(module_server.url, tmp_path_factory.mktemp("batch-data"), "batch-test-worker", tiny_catalog(),
                  worker_batch_size=4)


@pytest.fixture
def redis(module_redis, runner):
    runner.batching.size = 4
    yield module_redis
    runner.batching.size = 4


def drain(runner, redis) -> int:
    turns = 0
    while pop_and_run(runner, redis, TASK, MODEL) is not None:
        turns += 1
    return turns


def alone(runner, redis, params: dict) -> str:
    """The same job run with nothing else queued and batching off."""
    size = runner.batching.size
    runner.batching.size = 1
    try:
        job_id = submit(redis, TASK, MODEL, params)
        pop_and_run(runner, redis, TASK, MODEL)
        return job_id
    finally:
        runner.batching.size = size


def batches_of(size: int) -> float:
    """How many pipeline calls of exactly `size` images this process has made (fresco_batch_images)."""
    def bucket(le):
        return metrics.REGISTRY.get_sample_value("fresco_batch_images_bucket", {"task": TASK, "le": le}) or 0.0
    below = {1: None, 2: "1.0", 4: "2.0", 8: "4.0"}[size]
    return bucket(f"{float(size)}") - (bucket(below) if below else 0.0)


def test_compatible_jobs_run_together_and_give_their_images_alone(runner, redis):
    fours_before = batches_of(4)
    a = submit(redis, TASK, MODEL, turbo(10))
    odd = submit(redis, TASK, MODEL, turbo(15, size=320))  # another size: not compatible, left queued
    b = submit(redis, TASK, MODEL, turbo(20, num_images=2, prompt="a different prompt entirely"))
    c = submit(redis, TASK, MODEL, turbo(30))
    d = submit(redis, TASK, MODEL, turbo(40))  # beyond the batch of 4 images: the next batch
    e = submit(redis, TASK, MODEL, turbo(50))
    assert drain(runner, redis) == 3  # RQ hands over a, then odd, then d: three pipeline calls
    jobs = {k: job(redis, v) for k, v in dict(a=a, odd=odd, b=b, c=c, d=d, e=e).items()}
    assert {k: j["status"] for k, j in jobs.items()} == dict.fromkeys(jobs, "succeeded")
    assert batches_of(4) - fours_before == 1  # a + b (2 images) + c
    assert jobs["b"]["started_at"] == jobs["c"]["started_at"]  # taken off the queue together
    assert all(j["worker"] == "batch-test-worker" for j in jobs.values())
    assert [i["seed"] for i in jobs["b"]["result"]["images"]] == [20, 21]
    for j in jobs.values():
        assert j["progress"]["fraction"] == 1.0 and j["timings"]["total_s"] >= j["timings"]["inference_s"]
    # RQ's bookkeeping and Fresco's indexes: nothing left behind
    assert redis.keys(keys.rq_job("*")) == [] and redis.llen(keys.rq_queue(TASK, MODEL)) == 0
    assert redis.zcard(keys.status_index(TASK, JobStatus.RUNNING)) == 0
    assert redis.zcard(keys.status_index(TASK, JobStatus.QUEUED)) == 0
    assert redis.zcard(keys.status_index(TASK, JobStatus.SUCCEEDED)) == 6
    # each job's images are the ones it gets alone
    storage = runner.storage
    for key, params in dict(a=turbo(10), b=turbo(20, num_images=2, prompt="a different prompt entirely"),
                            c=turbo(30), e=turbo(50)).items():
        ref = alone(runner, redis, params)
        for i in range(params["num_images"]):
            assert same_pixels(image(storage, jobs[key]["id"], i), image(storage, ref, i)), key
    other = image(storage, a)
    assert np.abs(other - image(storage, c)).mean() > 5  # and the seeds do make different images


def cancel(redis, job_id: str) -> str:
    """What DELETE /jobs/{id} does (protocol.cancel)."""
    return protocol.cancel(job_id, TASK, MODEL, ttl=3600).run(redis)


def cancel_at_step(runner, monkeypatch, redis, ids: list[str], step: int) -> None:
    """Cancel `ids` (running) when the batch reports denoising step `step`."""
    report = runner.report

    def hooked(batch, state, progress=None):
        if state["stage"] == "denoise" and state["step"] == step:
            for job_id in ids:
                assert cancel(redis, job_id) == "running"
        return report(batch, state, progress)

    monkeypatch.setattr(runner, "report", hooked)


def test_a_job_canceled_mid_batch_ends_canceled_and_the_others_finish(runner, redis, monkeypatch):
    a, b, c = (submit(redis, TASK, MODEL, turbo(s, steps=3)) for s in (60, 70, 80))
    cancel_at_step(runner, monkeypatch, redis, [b], step=1)
    assert pop_and_run(runner, redis, TASK, MODEL) == {"status": "succeeded"}
    monkeypatch.undo()
    ja, jb, jc = job(redis, a), job(redis, b), job(redis, c)
    assert (ja["status"], jb["status"], jc["status"]) == ("succeeded", "canceled", "succeeded")
    assert jb["error"]["code"] == "canceled" and "result" not in jb and jb["progress"]["step"] == 1
    assert jb["started_at"] == jc["started_at"]  # it was in the batch
    with pytest.raises(FileNotFoundError):
        runner.storage.get(b, "0.png")
    assert redis.keys(keys.rq_job("*")) == []
    for job_id, seed in ((a, 60), (c, 80)):  # the others' images do not depend on the canceled one
        assert same_pixels(image(runner.storage, job_id), image(runner.storage, alone(runner, redis,
                                                                                          turbo(seed, steps=3))))


def test_a_batch_whose_jobs_are_all_canceled_stops_at_once(runner, redis, monkeypatch):
    ids = [submit(redis, TASK, MODEL, turbo(s, steps=4)) for s in (1, 2, 3)]
    cancel_at_step(runner, monkeypatch, redis, ids, step=1)
    assert pop_and_run(runner, redis, TASK, MODEL) == {"status": "canceled"}
    for job_id in ids:
        j = job(redis, job_id)
        assert j["status"] == "canceled" and j["progress"]["step"] == 1 and "result" not in j
    assert redis.keys(keys.rq_job("*")) == [] and redis.zcard(keys.status_index(TASK, JobStatus.RUNNING)) == 0


def test_two_workers_never_take_the_same_job(runner, redis):
    ids = [submit(redis, TASK, MODEL, turbo(s)) for s in (1, 2, 3)]

    def claim(worker: str, job_ids: list[str]) -> list[str]:
        return [c.id for c in protocol.claim(TASK, MODEL, job_ids, worker=worker, progress={},
                                             at=protocol.now()).run(redis)]

    first = claim("worker-x", ids[:2])
    second = claim("worker-y", ids)
    assert first == ids[:2] and second == ids[2:]
    assert [job(redis, i)["worker"] for i in ids] == ["worker-x", "worker-x", "worker-y"]
    assert redis.hget(keys.rq_job(ids[0]), "status") == b"started"  # marked, kept until the job ends
    cancel(redis, ids[0])  # a running job: only flagged
    assert claim("worker-z", ids) == []


def test_jobs_taken_by_a_worker_that_dies_go_back_to_rq(runner, redis, tmp_path):
    """The worker takes a batch, then dies before running it: the reaper requeues every job of the
    batch (retries=1), and RQ runs them, their RQ job hashes intact."""
    from service.jobs.reaper import Reaper

    ids = [submit(redis, TASK, MODEL, turbo(s), retries=1) for s in (5, 6, 7)]
    leader = redis.lpop(keys.rq_queue(TASK, MODEL)).decode()  # RQ pops the first
    first = {"stage": "denoise", "step": 0, "total_steps": 1, "fraction": 0.0}
    assert protocol.start(leader, TASK, worker=runner.name, progress=first, at=protocol.now()).run(redis)
    taken = runner.batching.gather(TASK, MODEL, runner.runtime.pipeline(TASK, MODEL),
                                    Member(leader, turbo(5), protocol.now(), protocol.now()), first)
    assert sorted(m.id for m in taken) == sorted(ids[1:])
    assert all(job(redis, i)["status"] == "running" for i in ids)
    # ... and the worker is gone (it never had a heartbeat here): the reaper's sweep
    counts = asyncio.run(_sweep(Reaper, settings(runner.settings.redis_url, tmp_path)))
    assert counts["requeued"] == 3
    assert all(job(redis, i)["status"] == "queued" for i in ids)
    assert redis.llen(keys.rq_queue(TASK, MODEL)) == 3
    runner.batching.size = 1
    assert drain(runner, redis) == 3
    assert all(job(redis, i)["status"] == "succeeded" for i in ids)
    assert redis.keys(keys.rq_job("*")) == []


async def _sweep(reaper_cls, s):
    r = async_client(s.redis_url)
    try:
        return await reaper_cls(r, s).sweep()
    finally:
        await r.aclose()
