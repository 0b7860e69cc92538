"""Worker heartbeats: written by each worker every few seconds (during jobs too), read by the API for
`/readyz`, `/models` and metrics. A worker whose heartbeat is older than its TTL counts as gone."""

from __future__ import annotations

import json
import time

from service.jobstore import WORKERS_KEY, dumps, worker_key


def beat(redis, name: str, info: dict, ttl: float) -> None:
    """One heartbeat (sync client): the worker's details under a TTL key, its name in the live set."""
    now = time.time()
    with redis.pipeline(transaction=True) as pipe:
        pipe.set(worker_key(name), dumps({**info, "name": name, "beat_at": now}), px=int(ttl * 1000))
        pipe.zadd(WORKERS_KEY, {name: now})
        pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - 24 * 3600)
        pipe.execute()


def forget(redis, name: str) -> None:
    with redis.pipeline(transaction=True) as pipe:
        pipe.delete(worker_key(name))
        pipe.zrem(WORKERS_KEY, name)
        pipe.execute()


async def live_workers(redis, ttl: float) -> list[dict]:
    """Workers seen within `ttl` seconds (async client), each as the dict it last published."""
    names = await redis.zrangebyscore(WORKERS_KEY, time.time() - ttl, "+inf")
    if not names:
        return []
    values = await redis.mget([worker_key(n.decode() if isinstance(n, bytes) else n) for n in names])
    return [json.loads(v) for v in values if v]
