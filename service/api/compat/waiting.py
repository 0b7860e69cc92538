"""What the compatible APIs share: they answer when the job ends, as OpenAI and AUTOMATIC1111 do.

`run_to_end` submits native request bodies through the one submit path and holds the HTTP request until
every job is terminal. Every body is validated before any is queued (a request split into several jobs
is queued whole or not at all), then it asks whether a live worker serves each job's task and model: with
none, the answer is 503 at once (a client holding a request open for minutes to learn that is worse than
a retry).
The wait is at most `compat_wait_s` (FRESCO_COMPAT_WAIT_S); past that the jobs still running are
canceled (nobody will collect them) and `WaitTimedOut` is raised for the adapter to answer in its own
error shape. `result_files` reads a finished job's images from storage (for base64 answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from service.api.deps import Context
from service.api.errors import FrescoError, Unavailable
from service.api.resolve import Resolved
from service.api.submit import enqueue, validate_request
from service.jobs.heartbeats import live_workers, serves
from service.jobs.states import TERMINAL
from service.redis import REDIS_DOWN


class WaitTimedOut(Exception):
    """The jobs did not end within the server's cap; they were canceled."""

    def __init__(self, seconds: int):
        super().__init__(f"the job did not finish within {seconds} s (the server's limit); it was canceled")
        self.seconds = seconds


async def run_to_end(c: Context, bodies: list[dict], owner: str | None,
                     on_submit=None) -> list[dict]:
    """Submit each native body (in order), wait for all to end; their terminal records, in order.
    `on_submit(job_id)`, if given, is called as each job is enqueued (A1111's progress follows it)."""
    resolved = [await validate_request(c, body, owner) for body in bodies]
    await require_workers(c, resolved)
    job_ids = []
    for job in resolved:
        job_id = await enqueue(c, job, owner)
        job_ids.append(job_id)
        if on_submit is not None:
            await on_submit(job_id)
    limit = c.settings.compat_wait_s
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    records = []
    for job_id in job_ids:
        h = await c.jobs.wait(job_id, max(0.0, deadline - loop.time()))
        records.append(h)
    late = [h["id"] for h in records if h["status"] not in TERMINAL]
    if late:
        for job_id in late:
            with contextlib.suppress(FrescoError):
                await c.jobs.cancel(job_id)
        raise WaitTimedOut(limit)
    return records


async def require_workers(c: Context, jobs: list[Resolved]) -> None:
    """Unavailable (503) unless a live worker serves every job's task and model."""
    try:
        workers = await live_workers(c.redis, c.settings.heartbeat_ttl_s)
    except REDIS_DOWN:
        raise Unavailable("the job queue is unreachable; retry later") from None
    served = {pair for w in workers for pair in w.get("serves", [])}
    for job in jobs:
        if serves(job.task, job.model) not in served:
            raise Unavailable(f"no live worker serves {job.model} for {job.task} now; retry later")


def result_names(h: dict) -> list[str]:
    """The stored names of a finished job's images, in order."""
    result = json.loads(h.get("result") or "null") or {}
    return [item["name"] for item in result.get("images") or []]


async def result_files(c: Context, h: dict) -> list[bytes]:
    """A finished job's images, read from storage, in order."""
    return [await asyncio.to_thread(c.storage.get, h["id"], name) for name in result_names(h)]
