"""Submitting a job. `submit_request` is the one path every API shares (the native `POST /generate` and
the compatible APIs): validate a native request body, resolve it, enqueue it. `submit` stores its input
images (`image`, each `control[i].image`), then enqueues in one atomic step (protocol.submit: Fresco's
record, the queued index, RQ's own job hash and queue entry, and the Idempotency-Key's job id).

The API enqueues RQ's entry point by dotted path and never imports the worker code. Past the task's
queue cap nothing is written and the answer is 503; past the API key's `max_queued`, 429. A priority
above the key's `max_priority` is a 422.
"""

from __future__ import annotations

import asyncio
import uuid

from pydantic import ValidationError

from service import adapter_registry
from service.api.deps import Context
from service.api.auth import RateLimited
from service.api.errors import Conflict, Unavailable, ValidationFailed, dedupe, field_error, validation_fields
from service.api.resolve import Resolved, resolve
from service.api.requests import generate_adapter
from service.jobs import keys, protocol
from service.redis import REDIS_DOWN
from service.settings import Settings
from service.storage import Storage
from service.tasks import TASKS

QUEUE_FULL_RETRY_AFTER_S = 10
OWNER_FULL_RETRY_AFTER_S = 5  # a key at its max_queued: about when one of its jobs may have started


def share(settings: Settings, owner: str | None) -> protocol.Share:
    """An API key's part of the workers, as the queue scripts take it."""
    limits = settings.limits(owner)
    return protocol.Share(weight=limits.weight, max_queued=limits.max_queued, max_running=limits.max_running,
                          fair=settings.fair_share)


def check_priority(settings: Settings, owner: str | None, priority: str) -> None:
    """422 when `priority` is above the key's `max_priority`."""
    highest = settings.limits(owner).max_priority
    if keys.PRIORITIES.index(priority) < keys.PRIORITIES.index(highest):
        raise ValidationFailed([field_error("priority", f"this API key may ask for {highest} at most")])


async def submit(redis, storage: Storage, settings: Settings, resolved: Resolved, *, owner: str | None,
                 idempotency: protocol.Idempotency | None = None) -> str:
    """Enqueue `resolved`; its id. `idempotency`: the claimed key, set to the job id in the same step."""
    check_priority(settings, owner, resolved.priority)
    job_id = str(uuid.uuid4())
    for name, data in resolved.inputs():
        await asyncio.to_thread(storage.put, job_id, name, data)
    task = resolved.task
    call = protocol.submit(job_id, task, resolved.model, resolved.params, owner=owner, retries=resolved.retries,
                           timeout_s=settings.job_timeout_s[task], cap=settings.queue_cap[task],
                           idempotency=idempotency, webhook=resolved.webhook, webhook_events=resolved.webhook_events,
                           priority=resolved.priority, share=share(settings, owner), adapter_urls=resolved.adapter_urls)
    try:
        enqueued = await call.arun(redis)
    except REDIS_DOWN:
        await asyncio.to_thread(storage.delete_job, job_id)
        raise Unavailable("the job queue is unreachable; retry later") from None
    if not enqueued:
        await asyncio.to_thread(storage.delete_job, job_id)
        if enqueued is protocol.Enqueued.CLAIM_LOST:
            raise Conflict("a request with this Idempotency-Key is still in flight", headers={"Retry-After": "1"})
        if enqueued is protocol.Enqueued.OWNER_FULL:
            raise RateLimited(OWNER_FULL_RETRY_AFTER_S, f"this API key has {share(settings, owner).max_queued} jobs "
                                                        "queued, its max_queued; retry when some have started")
        raise Unavailable(f"the {task} queue is full; retry later", retry_after=QUEUE_FULL_RETRY_AFTER_S)
    return job_id


async def validate_request(c: Context, data, owner: str | None = None, adapter=generate_adapter) -> Resolved:
    """`data` (a native request body, parsed JSON) validated (by `adapter`: POST /generate's union, or a
    task's own request class) and resolved for the API key `owner`; nothing is written yet.
    ValidationFailed (422, naming each field) when it is invalid."""
    try:
        req = adapter.validate_python(data)
    except ValidationError as exc:
        raise ValidationFailed(dedupe(validation_fields(exc))) from None
    return await resolve(req, c.catalog, c.settings, await owned_adapters(c, req, owner))


async def owned_adapters(c: Context, req, owner: str | None) -> dict[str, dict]:
    """The adapters `owner` trained, when the request may use one: a LoRA it names that is no server
    adapter, or a prompt with a `<…>` (an embedding's token is written so). One Redis read then; none for
    the other requests, which POST /generate's hot path keeps free of it."""
    if not TASKS[req.task].adapters:
        return {}
    unknown = [ref.name for ref in req.loras if ref.name is not None and ref.name not in c.catalog.adapters]
    text = f"{getattr(req, 'prompt', '')} {getattr(req, 'negative_prompt', '')}"
    if not unknown and "<" not in text:
        return {}
    try:
        return await adapter_registry.records(c.redis, owner)
    except REDIS_DOWN:
        raise Unavailable("the job queue is unreachable; retry later") from None


async def enqueue(c: Context, resolved: Resolved, owner: str | None,
                  idem: protocol.Idempotency | None = None) -> str:
    """Enqueue a resolved request and count it: the job's id. Unavailable (503) when it cannot queue."""
    job_id = await submit(c.redis, c.storage, c.settings, resolved, owner=owner, idempotency=idem)
    c.metrics.jobs_submitted.labels(resolved.task).inc()
    return job_id


async def submit_request(c: Context, data, owner: str | None, idem: protocol.Idempotency | None = None) -> str:
    """Validate, resolve and enqueue `data`: the job's id."""
    return await enqueue(c, await validate_request(c, data, owner), owner, idem)
