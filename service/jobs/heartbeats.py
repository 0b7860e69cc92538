"""Worker heartbeats: written by each worker every few seconds (during jobs too), read by the API for
`/readyz`, `/models` and metrics, and by the reaper. A worker whose heartbeat is older than its TTL
counts as gone."""

from __future__ import annotations

import json
import time

from service.jobs import keys
from service.jobs.protocol import dumps

FORGET_AFTER_S = 24 * 3600  # a worker not seen for this long leaves the workers set


def serves(task: str, model: str) -> str:
    """How a worker's heartbeat names one (task, model) pair it serves."""
    return f"{task}/{model}"


def beat(redis, name: str, info: dict, ttl: float) -> None:
    """One heartbeat (sync client): the worker's details under a TTL key, its name in the live set."""
    now = time.time()
    with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.worker(name), dumps({**info, "name": name, "beat_at": now}), px=int(ttl * 1000))
        pipe.zadd(keys.WORKERS, {name: now})
        pipe.zremrangebyscore(keys.WORKERS, "-inf", now - FORGET_AFTER_S)
        pipe.execute()


def forget(redis, name: str) -> None:
    with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.worker(name))
        pipe.zrem(keys.WORKERS, name)
        pipe.execute()


async def live_workers(redis, ttl: float) -> list[dict]:
    """Workers seen within `ttl` seconds (async client), each as the dict it last published."""
    names = await redis.zrangebyscore(keys.WORKERS, time.time() - ttl, "+inf")
    if not names:
        return []
    values = await redis.mget([keys.worker(n.decode() if isinstance(n, bytes) else n) for n in names])
    return [json.loads(v) for v in values if v]


async def is_alive(redis, name: str) -> bool:
    """The worker's heartbeat key has not expired (async client)."""
    return bool(await redis.exists(keys.worker(name)))
