"""A client's access to existing jobs: read one (another API key's job is as unknown as no job),
wait for it to end (long-poll, woken by the job's events), cancel it."""

from __future__ import annotations

import asyncio
import uuid

from service.api.errors import Conflict, NotFound, Unavailable
from service.api.events import EventHub
from service.jobs import protocol
from service.jobs.protocol import CancelOutcome
from service.jobs.states import TERMINAL, EventType
from service.redis import REDIS_DOWN

MAX_WAIT_S = 60  # the longest `?wait=N` or `Prefer: wait=N` the API holds a request for
RECHECK_S = 5.0  # while waiting, re-read the job this often even without an event


class JobAccess:
    def __init__(self, redis, hub: EventHub, job_ttl_s: int):
        self.redis, self.hub, self.job_ttl_s = redis, hub, job_ttl_s

    async def read(self, job_id: str) -> dict | None:
        """The job's record (str -> str, with `_queue_position`), or None for no such job."""
        try:
            uuid.UUID(job_id)
        except ValueError:
            return None
        try:
            return await protocol.view(job_id).arun(self.redis)
        except REDIS_DOWN:
            raise Unavailable("the job store is unreachable; retry later") from None

    async def get(self, job_id: str, owner: str | None = None) -> dict:
        """The job's record; with `owner` (API keys on), another key's job is as unknown as no job."""
        h = await self.read(job_id)
        if h is None or (owner is not None and h.get("owner", "") != owner):
            raise NotFound()
        return h

    async def cancel(self, job_id: str, owner: str | None = None) -> dict:
        h = await self.get(job_id, owner)
        try:
            outcome = await protocol.cancel(job_id, h["task"], h["model"], ttl=self.job_ttl_s).arun(self.redis)
        except REDIS_DOWN:
            raise Unavailable("the job store is unreachable; retry later") from None
        if outcome is CancelOutcome.MISSING:
            raise NotFound()
        if outcome is CancelOutcome.ENDED:
            raise Conflict("the job has already ended")
        return await self.get(job_id)

    async def wait(self, job_id: str, timeout: float, owner: str | None = None) -> dict:
        """The job's record once it is terminal, or when `timeout` seconds have passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self.hub.subscribe(job_id) as events:
            h = await self.get(job_id, owner)
            while h["status"] not in TERMINAL:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(events.get(), min(remaining, RECHECK_S))
                except asyncio.TimeoutError:
                    event = None
                if event is None or event.get("type") != EventType.PROGRESS:
                    h = await self.get(job_id)
            return h
