"""The dispatcher's side of the webhook outbox: one typed function per script in `scripts/`, as
service/jobs/protocol.py does for the job's transitions (which write the deliveries).

A delivery lives in a hash (`keys.webhook_delivery(id)`, fields `keys.DELIVERY_FIELDS`) and in the due
set, scored by when it is due. `take` leases due ones to a dispatcher (`renew` extends a lease); `keep_body`
stores the body its first attempt renders; `settle` records each attempt: due again later, or done.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from service.jobs import keys
from service.jobs.protocol import Call, Script, decode_hash
from service.jobs.states import WebhookEvent

SCRIPTS = Path(__file__).with_name("scripts")
TAKE, KEEP_BODY, SETTLE = (Script(n, folder=SCRIPTS) for n in ("take", "keep_body", "settle"))


@dataclass(frozen=True)
class Delivery:
    """One delivery as stored: `snapshot` (the job record the event left) until `body` is rendered."""

    id: str
    job: str
    event: WebhookEvent
    url: str
    created_at: float
    seq: int
    attempts: int
    body: str | None
    snapshot: dict[str, str] | None

    @classmethod
    def parse(cls, delivery_id: str, raw) -> "Delivery | None":
        h = decode_hash(raw)
        if not h.get("job") or not h.get("url"):
            return None  # gone (settled meanwhile)
        return cls(delivery_id, h["job"], WebhookEvent(h["event"]), h["url"], float(h["created_at"]),
                   int(h.get("seq") or 0), int(h.get("attempts") or 0), h.get("body"),
                   json.loads(h["snapshot"]) if h.get("snapshot") else None)


def _ids(reply) -> list[str]:
    return [i.decode() if isinstance(i, bytes) else i for i in reply]


def take(now: float, lease_until: float, limit: int) -> Call[list[str]]:
    """The ids of up to `limit` due deliveries, leased until `lease_until`."""
    return Call(TAKE, (keys.WEBHOOKS_DUE,), (repr(now), repr(lease_until), limit), _ids)


async def read(redis, ids: Sequence[str]) -> list[Delivery | None]:
    """The deliveries `ids` name, in one round trip; None for one that is gone."""
    async with redis.pipeline(transaction=False) as pipe:
        for delivery_id in ids:
            pipe.hgetall(keys.webhook_delivery(delivery_id))
        rows = await pipe.execute()
    return [Delivery.parse(delivery_id, row) for delivery_id, row in zip(ids, rows)]


def keep_body(delivery_id: str, body: str) -> Call[str | None]:
    """Store the rendered body unless one is stored already: the body to send (None: the delivery is gone)."""
    return Call(KEEP_BODY, (keys.webhook_delivery(delivery_id),), (body,),
                lambda reply: reply.decode() if isinstance(reply, bytes) else reply or None)


def settle(delivery: Delivery, *, retry_at: float | None, delivered: bool, status: int | None) -> Call[bool]:
    """Record an attempt: due again at `retry_at`, or (None) done; on the job's record when it still
    exists. False when another attempt had settled the delivery already."""
    return Call(SETTLE, (keys.WEBHOOKS_DUE, keys.webhook_delivery(delivery.id), keys.job(delivery.job)),
                (delivery.id, repr(retry_at) if retry_at else 0, 1 if delivered else 0,
                 "" if status is None else status),
                lambda reply: bool(reply))


async def renew(redis, delivery_id: str, lease_until: float) -> bool:
    """Extend a taken delivery's lease (a delivery that waited for the one before it); False when it is
    no longer due (settled)."""
    return bool(await redis.zadd(keys.WEBHOOKS_DUE, {delivery_id: lease_until}, xx=True, ch=True))


async def drop(redis, delivery_id: str) -> None:
    """Forget a due id whose delivery hash is gone (ids are never reused, so it cannot come back)."""
    await redis.zrem(keys.WEBHOOKS_DUE, delivery_id)


async def pending(redis) -> int:
    """Deliveries not yet delivered or given up (due, waiting for a retry, or in flight)."""
    return await redis.zcard(keys.WEBHOOKS_DUE)
