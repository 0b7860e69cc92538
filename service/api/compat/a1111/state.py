"""What AUTOMATIC1111 keeps as server state, kept per API key in Redis: the options a key set (its
checkpoint) and the calls it has in flight (what `/progress` reports and `/interrupt` stops).

A1111 serves one user: one checkpoint for everyone, one job at a time, one global progress. Fresco serves
many keys, so each key has its own remembered `sd_model_checkpoint` (with API keys off, one shared slot),
and each txt2img/img2img call registers as a *run*: the native jobs it submitted, in order. `/progress` follows
the key's oldest run in flight (A1111's "current job"), `/interrupt` cancels that run's jobs. Redis, not
process memory, so that every API process answers the same.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from redis.exceptions import WatchError

from service.jobs import keys

CHECKPOINT = "sd_model_checkpoint"
RUN_GRACE_S = 60  # a run's record outlives the longest wait by this much, then expires (an API process died)


def _str(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def remembered_checkpoint(redis, owner: str | None) -> str | None:
    """The Fresco model this key chose with POST /options, if any."""
    return _str(await redis.hget(keys.a1111_options(owner), CHECKPOINT))


async def remember_checkpoint(redis, owner: str | None, model: str) -> None:
    await redis.hset(keys.a1111_options(owner), CHECKPOINT, model)


@dataclass
class Run:
    """One txt2img/img2img call of a key: the jobs it planned and submitted so far."""

    id: str
    owner: str | None
    count: int  # the native jobs it plans
    started: float
    timestamp: str  # A1111's `job_timestamp`: when it began, YYYYmmddHHMMSS
    jobs: list[str]
    interrupted: bool = False


async def begin(redis, owner: str | None, count: int, wait_s: int) -> Run:
    """Register a call that will submit `count` jobs and wait for them at most `wait_s` seconds."""
    now = time.time()
    run = Run(uuid.uuid4().hex, owner, count, now, datetime.now().strftime("%Y%m%d%H%M%S"), [])
    ttl = wait_s + RUN_GRACE_S
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.a1111_run(run.id), mapping={"count": count, "started": repr(now), "timestamp": run.timestamp})
        pipe.expire(keys.a1111_run(run.id), ttl)
        pipe.zadd(keys.a1111_runs(owner), {run.id: now + ttl})
        pipe.expire(keys.a1111_runs(owner), ttl)
        await pipe.execute()
    return run


async def add_job(redis, run: Run, job_id: str) -> bool:
    """Record the run's next job; True when the run was interrupted meanwhile (cancel the job then). The job
    is written before the flag is read, and `interrupt` sets the flag before it reads the jobs, so every job
    is either seen by `interrupt` or sees its flag."""
    run.jobs.append(job_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.a1111_run(run.id), f"job:{len(run.jobs) - 1}", job_id)
        pipe.hget(keys.a1111_run(run.id), "interrupted")
        _, flag = await pipe.execute()
    run.interrupted = bool(flag)
    return run.interrupted


async def end(redis, run: Run) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.a1111_runs(run.owner), run.id)
        pipe.delete(keys.a1111_run(run.id))
        await pipe.execute()


def _run(run_id: str, owner: str | None, h: dict) -> Run:
    fields = {_str(k): _str(v) for k, v in h.items()}
    jobs = [fields[f"job:{i}"] for i in range(len(fields)) if f"job:{i}" in fields]
    return Run(run_id, owner, int(fields.get("count") or 0), float(fields.get("started") or 0),
               fields.get("timestamp") or "0", jobs, bool(fields.get("interrupted")))


async def current(redis, owner: str | None) -> Run | None:
    """The key's oldest run in flight (A1111's current job), or None when it has none."""
    runs_key = keys.a1111_runs(owner)
    await redis.zremrangebyscore(runs_key, "-inf", time.time())
    for raw in await redis.zrange(runs_key, 0, 4):
        run_id = _str(raw)
        h = await redis.hgetall(keys.a1111_run(run_id))
        if h:
            return _run(run_id, owner, h)
        await redis.zrem(runs_key, run_id)  # its call ended between the two reads
    return None


async def interrupt(redis, owner: str | None) -> Run | None:
    """Flag the key's current run as interrupted: the run, with the jobs it has submitted, to cancel. The
    flag is set and the jobs read in one transaction, and only while the run's record exists (WATCH), so an
    interrupt racing the run's end never leaves a record behind."""
    for _ in range(10):
        run = await current(redis, owner)
        if run is None:
            return None
        key = keys.a1111_run(run.id)
        try:
            async with redis.pipeline(transaction=True) as pipe:
                await pipe.watch(key)
                if not await pipe.exists(key):
                    continue
                pipe.multi()
                pipe.hset(key, "interrupted", "1")
                pipe.hgetall(key)
                _, h = await pipe.execute()
        except WatchError:  # a job was added meanwhile: read again
            continue
        return _run(run.id, owner, h)
    return None
