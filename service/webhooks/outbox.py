"""The dispatcher's side of the webhook outbox: one typed function per script in `scripts/`, as
service/jobs/protocol.py does for the job's transitions (which write the deliveries).

A delivery lives in a hash (`keys.webhook_delivery(id)`, fields `keys.DELIVERY_FIELDS`) and in the due
set, scored by when it is due. `look` picks due ones fairly across API keys, `take` leases them to a
dispatcher (`renew` extends a lease); `keep_body` stores the body its first attempt renders; `settle`
records each attempt: due again later, or done.

Fair across API keys (a delivery's `owner`): the leased hash names every delivery taken and not settled
yet with its key, so `take` keeps each key to FRESCO_WEBHOOK_MAX_IN_FLIGHT_PER_KEY leases over every
dispatcher sharing the Redis, and `look` reads past a capped key's due deliveries (up to SCAN_LIMIT of
them) to the other keys', in turns: one key's slow receivers hold at most its own slots.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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
    owner: str = ""  # the job's API key's name ('' when keys are off, and for deliveries written before owners)

    @classmethod
    def parse(cls, delivery_id: str, raw) -> "Delivery | None":
        h = decode_hash(raw)
        if not h.get("job") or not h.get("url"):
            return None  # gone (settled meanwhile)
        return cls(delivery_id, h["job"], WebhookEvent(h["event"]), h["url"], float(h["created_at"]),
                   int(h.get("seq") or 0), int(h.get("attempts") or 0), h.get("body"),
                   json.loads(h["snapshot"]) if h.get("snapshot") else None, h.get("owner") or "")


def _ids(reply) -> list[str]:
    return [i.decode() if isinstance(i, bytes) else i for i in reply]


SCAN_PAGE = 256  # due deliveries read at a time by `look`
SCAN_LIMIT = 4096  # the most due deliveries one `look` reads, past keys at their cap, to find other keys'
OWNERS_KEPT = 100_000  # delivery id -> key names remembered (ids are never reused: a name never changes)


@dataclass
class Look:
    """What one look at the due set found: the deliveries to offer `take`, as (id, key name) in the
    order to take them; and how many keys had due deliveries left waiting because they were at their cap."""

    candidates: list[tuple[str, str]] = field(default_factory=list)
    capped: int = 0


async def held(redis, now: float) -> dict[str, int]:
    """Each key's leases that have not run out (what `take` counts against its cap)."""
    leased = decode_hash(await redis.hgetall(keys.WEBHOOKS_LEASED))
    if not leased:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for delivery_id in leased:
            pipe.zscore(keys.WEBHOOKS_DUE, delivery_id)
        dues = await pipe.execute()
    counts: dict[str, int] = {}
    for owner, due in zip(leased.values(), dues):
        if due is not None and due > now:
            counts[owner] = counts.get(owner, 0) + 1
    return counts


async def look(redis, now: float, room: int, cap: int, owners: dict[str, str]) -> Look:
    """Up to `room` due deliveries to take, fairly: at most `cap` leases per key (0: no cap; the key ''
    of API keys off has none) counting those it holds, in turns between keys (each key's earliest due
    first, keys by their earliest due delivery). Reads the due set a page at a time, past keys at their
    cap, up to SCAN_LIMIT deliveries. `owners` remembers each delivery's key across looks."""
    if len(owners) > OWNERS_KEPT:
        owners.clear()
    counts: dict[str, int] = {}

    def free(owner: str) -> int:
        return room if not cap or owner == "" else max(0, cap - counts.get(owner, 0))

    queues: dict[str, list[str]] = {}  # key name -> its candidates, in due order; keys in order of first due
    waiting: set[str] = set()  # keys with due deliveries beyond their free slots
    found, offset = 0, 0
    while found < room and offset < SCAN_LIMIT:
        ids = _ids(await redis.zrangebyscore(keys.WEBHOOKS_DUE, "-inf", repr(now), start=offset, num=SCAN_PAGE))
        if not ids:
            break
        if offset == 0 and cap:
            counts = await held(redis, now)  # read only when something is due: an idle look is one command
        unknown = [i for i in ids if i not in owners]
        if unknown:
            async with redis.pipeline(transaction=False) as pipe:
                for delivery_id in unknown:
                    pipe.hget(keys.webhook_delivery(delivery_id), "owner")
                for delivery_id, owner in zip(unknown, await pipe.execute()):
                    owners[delivery_id] = owner.decode() if isinstance(owner, bytes) else owner or ""
        for delivery_id in ids:
            owner = owners[delivery_id]
            queue = queues.setdefault(owner, [])
            if len(queue) < min(free(owner), room):
                queue.append(delivery_id)
                found += 1
            else:
                waiting.add(owner)
        if len(ids) < SCAN_PAGE:
            break
        offset += SCAN_PAGE
    result = Look(capped=sum(1 for owner in waiting if free(owner) < room))
    for turn in range(max((len(q) for q in queues.values()), default=0)):
        result.candidates += [(q[turn], owner) for owner, q in queues.items() if turn < len(q)]
    del result.candidates[room:]
    return result


def take(now: float, lease_until: float, room: int, cap: int, candidates: Sequence[tuple[str, str]]) -> Call[list[str]]:
    """Lease until `lease_until` up to `room` of `candidates` (id, key name; in the order given) that are
    still due and whose key holds fewer than `cap` leases (0: no cap): the ids taken."""
    return Call(TAKE, (keys.WEBHOOKS_DUE, keys.WEBHOOKS_LEASED),
                (repr(now), repr(lease_until), room, cap, *(part for pair in candidates for part in pair)), _ids)


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
    return Call(SETTLE, (keys.WEBHOOKS_DUE, keys.webhook_delivery(delivery.id), keys.job(delivery.job),
                         keys.WEBHOOKS_LEASED),
                (delivery.id, repr(retry_at) if retry_at else 0, 1 if delivered else 0,
                 "" if status is None else status),
                lambda reply: bool(reply))


async def renew(redis, delivery_id: str, lease_until: float) -> bool:
    """Extend a taken delivery's lease (a delivery that waited for the one before it); False when it is
    no longer due (settled)."""
    return bool(await redis.zadd(keys.WEBHOOKS_DUE, {delivery_id: lease_until}, xx=True, ch=True))


async def drop(redis, delivery_id: str) -> None:
    """Forget a due id whose delivery hash is gone (ids are never reused, so it cannot come back)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrem(keys.WEBHOOKS_DUE, delivery_id)
        pipe.hdel(keys.WEBHOOKS_LEASED, delivery_id)
        await pipe.execute()


async def pending(redis) -> int:
    """Deliveries not yet delivered or given up (due, waiting for a retry, or in flight)."""
    return await redis.zcard(keys.WEBHOOKS_DUE)
