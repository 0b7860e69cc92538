"""What the compatible APIs share: they answer when the job ends, as OpenAI and AUTOMATIC1111 do.

`run_to_end` submits native request bodies through the one submit path and holds the HTTP request until
every job is terminal, at most `compat_wait_s` (FRESCO_COMPAT_WAIT_S); past that the jobs still running are
canceled (nobody will collect them) and `WaitTimedOut` is raised for the adapter to answer in its own
error shape. `result_files` reads a finished job's images from storage (for base64 answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from service.api.deps import Context
from service.api.errors import FrescoError
from service.api.submit import submit_request
from service.jobs.states import TERMINAL


class WaitTimedOut(Exception):
    """The jobs did not end within the server's cap; they were canceled."""

    def __init__(self, seconds: int):
        super().__init__(f"the job did not finish within {seconds} s (the server's limit); it was canceled")
        self.seconds = seconds


async def run_to_end(c: Context, bodies: list[dict], owner: str | None,
                     on_submit=None) -> list[dict]:
    """Submit each native body (in order), wait for all to end; their terminal records, in order.
    `on_submit(job_id)`, if given, is called as each job is enqueued (A1111's progress follows it)."""
    job_ids = []
    for body in bodies:
        job_id = await submit_request(c, body, owner)
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


def result_names(h: dict) -> list[str]:
    """The stored names of a finished job's images, in order."""
    result = json.loads(h.get("result") or "null") or {}
    return [item["name"] for item in result.get("images") or []]


async def result_files(c: Context, h: dict) -> list[bytes]:
    """A finished job's images, read from storage, in order."""
    return [await asyncio.to_thread(c.storage.get, h["id"], name) for name in result_names(h)]
