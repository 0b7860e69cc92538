"""Submitting a job: its input images (`image`, each `control[i].image`) to storage, then one atomic
enqueue (protocol.submit: Fresco's record, the queued index, RQ's own job hash and queue entry, and the
Idempotency-Key's job id).

The API enqueues RQ's entry point by dotted path and never imports the worker code. Past the task's
queue cap nothing is written and the answer is 503.
"""

from __future__ import annotations

import asyncio
import uuid

from service.api.errors import Unavailable
from service.api.resolve import Resolved
from service.jobs import protocol
from service.redis import REDIS_DOWN
from service.settings import Settings
from service.storage import Storage

QUEUE_FULL_RETRY_AFTER_S = 10


async def submit(redis, storage: Storage, settings: Settings, resolved: Resolved, *, owner: str | None,
                 idempotency: protocol.Idempotency | None = None) -> str:
    """Enqueue `resolved`; its id. `idempotency`: the claimed key, set to the job id in the same step."""
    job_id = str(uuid.uuid4())
    for name, data in resolved.inputs():
        await asyncio.to_thread(storage.put, job_id, name, data)
    task = resolved.task
    call = protocol.submit(job_id, task, resolved.model, resolved.params, owner=owner, retries=resolved.retries,
                           timeout_s=settings.job_timeout_s[task], cap=settings.queue_cap[task],
                           idempotency=idempotency)
    try:
        enqueued = await call.arun(redis)
    except REDIS_DOWN:
        await asyncio.to_thread(storage.delete_job, job_id)
        raise Unavailable("the job queue is unreachable; retry later") from None
    if not enqueued:
        await asyncio.to_thread(storage.delete_job, job_id)
        raise Unavailable(f"the {task} queue is full; retry later", retry_after=QUEUE_FULL_RETRY_AFTER_S)
    return job_id
