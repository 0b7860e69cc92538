"""service/jobs/reaper.py on a real Redis: lost workers' jobs fail or go back to their queue, stuck jobs
time out, jobs lost between pop and start are restored, expired jobs' files are deleted. (Real worker
processes killed mid-job: tests/faults/test_faults.py.)"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from service.jobs import heartbeats, keys, protocol


def test_reaper_deletes_files_of_expired_jobs_only(app_settings, tmp_path):
    import os
    import time as _time

    from service.jobs.reaper import Reaper
    from service.redis import async_client
    from service.storage import LocalStorage

    store = LocalStorage(tmp_path / "results")
    expired, alive, fresh = (str(uuid.uuid4()) for _ in range(3))
    for job_id in (expired, alive, fresh):
        store.put(job_id, "0.png", b"png")
    old = _time.time() - 7200
    for job_id in (expired, alive):
        os.utime(store.root / job_id, (old, old))

    async def run():
        redis = async_client(app_settings.redis_url)
        await redis.hset(keys.job(alive), "status", "succeeded")
        try:
            return await Reaper(redis, app_settings, store).expire_results()
        finally:
            await redis.delete(keys.job(alive))
            await redis.aclose()

    assert asyncio.run(run()) == 1
    assert store.local_path(expired, "0.png") is None  # its job record is gone: so are its files
    assert store.local_path(alive, "0.png") is not None  # its job still exists
    assert store.local_path(fresh, "0.png") is not None  # too new: its record may be on its way


# ---------------------------------------------------------------- sweeps, on a server of their own


@pytest.fixture
def redis(module_redis):
    return module_redis


def sweep(server_url: str, **settings) -> dict:
    from service.jobs.reaper import Reaper
    from service.redis import async_client
    from service.settings import Settings

    async def run():
        r = async_client(server_url)
        try:
            return await Reaper(r, Settings(redis_url=server_url, **settings)).sweep()
        finally:
            await r.aclose()

    return asyncio.run(run())


def running_job(redis, worker: str, *, retries: int = 0, started: float | None = None) -> str:
    job_id = str(uuid.uuid4())
    protocol.submit(job_id, "turbo", "m", {}, owner=None, retries=retries, timeout_s=60, cap=0).run(redis)
    redis.lpop(keys.rq_queue("turbo", "m"))
    protocol.start(job_id, "turbo", worker=worker, progress={}, at=started or protocol.now()).run(redis)
    return job_id


def test_jobs_of_a_lost_worker_fail_or_go_back_once(module_server, redis):
    fails, retries = running_job(redis, "lost"), running_job(redis, "lost", retries=1)
    assert sweep(module_server.url) == {"worker_lost": 1, "requeued": 1, "timeout": 0, "restored": 0}
    assert redis.hget(keys.job(fails), "status") == b"failed"
    assert redis.hget(keys.job(retries), "status") == b"queued"
    assert sweep(module_server.url)["worker_lost"] == 0  # nothing left to do


def test_a_live_workers_job_past_its_timeout_fails_as_stuck(module_server, redis):
    heartbeats.beat(redis, "alive", {}, ttl=30)
    stuck = running_job(redis, "alive", started=protocol.now() - 200)
    fresh = running_job(redis, "alive")
    counts = sweep(module_server.url, job_timeout_s={"turbo": 100})  # 100 s + 60 s grace < 200 s
    assert counts["timeout"] == 1 and counts["worker_lost"] == 0
    assert json.loads(redis.hget(keys.job(stuck), "error"))["code"] == "timeout"
    assert redis.hget(keys.job(fresh), "status") == b"running"


def test_a_queued_job_on_no_list_is_put_back(module_server, redis, monkeypatch):
    from service.jobs import reaper

    job_id = str(uuid.uuid4())
    protocol.submit(job_id, "turbo", "m", {}, owner=None, retries=0, timeout_s=60, cap=0).run(redis)
    redis.lpop(keys.rq_queue("turbo", "m"))  # popped by a worker that died before starting it
    assert sweep(module_server.url)["restored"] == 0  # not yet: it may be starting right now
    monkeypatch.setattr(reaper, "RESTORE_AFTER_S", 0.0)
    assert sweep(module_server.url)["restored"] == 1
    assert redis.lrange(keys.rq_queue("turbo", "m"), 0, -1) == [job_id.encode()]
