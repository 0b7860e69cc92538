"""Idempotency-Key: the same key and body give the same job, however many copies arrive at once.

The first request claims the key (SET NX, value `<body digest>:pending:<token>`, for CLAIM_TTL_S); the
submit script replaces the value with `<body digest>:<job id>` (for the idempotency TTL) in the same atomic
step that enqueues, and only while the claim is still this request's. A copy that arrives meanwhile waits
briefly for the job id; the same key with another body is a 422; a key still claimed by a request that has
not enqueued after the wait is a 409 with Retry-After.

A request that dies between its claim and its enqueue (its API process killed, or Redis gone before it
could let go) leaves its claim behind: the claim's short TTL frees the key for a retry, and the token
keeps the dead request, should it come back late, from enqueueing a second job.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets

from service.api.errors import Conflict, ValidationFailed, field_error
from service.jobs import keys

PENDING = "pending"
WAIT_S = 5.0
CLAIM_TTL_S = 30  # a claim nobody enqueued under (or let go of) frees its key after this long


def body_digest(data) -> str:
    """Of the parsed body, so key order and whitespace do not make a different body."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def redis_key(owner: str | None, key: str) -> str:
    return keys.idempotency(hashlib.sha256(f"{owner or ''}\0{key}".encode()).hexdigest())


def check_header(key: str) -> None:
    if not (1 <= len(key) <= 255 and key.isascii() and key.isprintable()):
        raise ValidationFailed([field_error("Idempotency-Key", "must be 1 to 255 printable ASCII characters")])


def new_claim(digest: str) -> str:
    """The value a request claims its key with: its own, so only it can enqueue under it or let it go."""
    return f"{digest}:{PENDING}:{secrets.token_hex(8)}"


async def claim(redis, rkey: str, digest: str, mine: str) -> str | None:
    """None when this request claimed the key (with the value `mine`, from `new_claim`) and goes on to
    enqueue; else the existing job's id."""
    if await redis.set(rkey, mine, nx=True, ex=CLAIM_TTL_S):
        return None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        value = await redis.get(rkey)
        if value is None:  # the first request failed and let go: take the key now
            if await redis.set(rkey, mine, nx=True, ex=CLAIM_TTL_S):
                return None
            continue
        stored_digest, _, job = (value.decode() if isinstance(value, bytes) else value).partition(":")
        if stored_digest != digest:
            raise ValidationFailed([field_error("Idempotency-Key", "was already used with another request body")])
        if job.partition(":")[0] != PENDING:
            return job
        if loop.time() >= deadline:
            raise Conflict("a request with this Idempotency-Key is still in flight", headers={"Retry-After": "1"})
        await asyncio.sleep(0.01)


async def release(redis, rkey: str, mine: str) -> None:
    """Let go of a claim whose request failed before enqueueing (only if it is still ours)."""
    value = await redis.get(rkey)
    if value is not None and (value.decode() if isinstance(value, bytes) else value) == mine:
        await redis.delete(rkey)
