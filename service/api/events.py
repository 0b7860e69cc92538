"""One pub/sub connection per API process, fanned out to the requests waiting on a job.

Long-polls (`?wait=N`, `Prefer: wait=N`) and SSE streams subscribe here instead of polling Redis:
a waiter wakes the moment its job's worker publishes. When the connection drops, every waiter is
told to re-read the job, and the hub reconnects on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from service.jobs.keys import EVENTS_PATTERN

log = logging.getLogger("fresco.events")
# Not a job's event: told to every waiter when the connection was lost or is back, so that it re-reads
# the job (anything may have happened meanwhile).
RECONNECT = {"type": "reconnect"}


class EventHub:
    def __init__(self, redis):
        self._redis = redis
        self._subs: dict[str, set[asyncio.Queue]] = {}
        self._task: asyncio.Task | None = None
        self.connected = asyncio.Event()
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fresco-events")

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2)

    def _broadcast(self, event: dict) -> None:
        for queues in self._subs.values():
            for q in queues:
                q.put_nowait(event)

    async def _run(self) -> None:
        prefix = len(EVENTS_PATTERN) - 1
        while not self._stopping:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(EVENTS_PATTERN)
                self.connected.set()
                self._broadcast(RECONNECT)  # anything published while we were away: re-read
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
                        continue
                    channel = message["channel"]
                    job_id = (channel.decode() if isinstance(channel, bytes) else channel)[prefix:]
                    queues = self._subs.get(job_id)
                    if queues:
                        event = json.loads(message["data"])
                        for q in queues:
                            q.put_nowait(event)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                raise
            except Exception as exc:  # Redis gone: tell waiters, retry
                if self.connected.is_set():
                    log.warning("event stream lost (%s); reconnecting", type(exc).__name__)
                self.connected.clear()
                self._broadcast(RECONNECT)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                await asyncio.sleep(0.5)

    @contextlib.contextmanager
    def subscribe(self, job_id: str):
        q: asyncio.Queue = asyncio.Queue()
        self._subs.setdefault(job_id, set()).add(q)
        try:
            yield q
        finally:
            queues = self._subs.get(job_id)
            if queues is not None:
                queues.discard(q)
                if not queues:
                    del self._subs[job_id]
