"""Submit, view, cancel and wait for jobs: the API's side of Redis and RQ.

A submit is one transaction: Fresco's job hash, the `queued` index, and RQ's own job hash and queue
entry (built with RQ's `Job` and JSON serializer, so an unmodified RQ worker reads it). The API
enqueues by dotted path and never imports the worker code.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import redis as redis_sync
from redis import exceptions as redis_errors
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from service import jobstore as js
from service.errors import Conflict, NotFound, Unavailable
from service.events import EventHub
from service.resolve import Resolved
from service.settings import Settings
from service.storage import Storage

REDIS_DOWN = (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.BusyLoadingError, OSError)
_RQ_CONNECTION = redis_sync.Redis()  # RQ's Job wants one; building the hash never uses it


def _rq_job_mapping(job_id: str, task: str, model: str, payload: dict, timeout: int) -> dict:
    job = Job.create(
        js.RQ_FUNC,
        args=[payload],
        connection=_RQ_CONNECTION,
        serializer=JSONSerializer,
        id=job_id,
        timeout=timeout,
        result_ttl=0,  # Fresco keeps its own record; RQ drops its copy when done
        failure_ttl=24 * 3600,
        status=JobStatus.QUEUED,
        origin=js.queue_name(task, model),
        description=f"fresco {task} {job_id}",
    )
    job.enqueued_at = datetime.now(timezone.utc)
    return job.to_dict()


class JobQueue:
    def __init__(self, redis, hub: EventHub, storage: Storage, settings: Settings):
        self.redis = redis
        self.hub = hub
        self.storage = storage
        self.settings = settings
        self._view = redis.register_script(js.VIEW)
        self._cancel = redis.register_script(js.CANCEL)
        self._submit = redis.register_script(js.SUBMIT)

    async def submit(self, resolved: Resolved, *, owner: str = "", idempotency: tuple[str, str] | None = None) -> str:
        """Enqueue atomically: past the task's queue cap nothing is written and the answer is 503.
        `idempotency` is (key, value prefix): the key is set to `<prefix><job id>` in the same step."""
        job_id = str(uuid.uuid4())
        if resolved.image is not None:
            await asyncio.to_thread(self.storage.put, job_id, resolved.image.filename, resolved.image.data)
        task, model = resolved.task, resolved.model
        payload = {"id": job_id, "task": task, "model": model}
        now = js.now()
        fields = js.new_job_fields(job_id, task, model, resolved.params, now, owner=owner, retries=resolved.retries)
        rq_fields = _rq_job_mapping(job_id, task, model, payload, self.settings.job_timeout_s.get(task, 600))
        idem_key, idem_value = (idempotency[0], idempotency[1] + job_id) if idempotency else ("fresco:idem:-", "")
        args: list = [job_id, repr(now), self.settings.queue_cap.get(task, 0), idem_value,
                      self.settings.idempotency_ttl_s, len(fields)]
        for k, v in fields.items():
            args += [k, v]
        for k, v in rq_fields.items():
            args += [k, v]
        try:
            reply = await self._submit(keys=[js.job_key(job_id), js.rq_job_key(job_id), js.state_key(task, "queued"),
                                             js.rq_queue_key(task, model), idem_key], args=args)
        except REDIS_DOWN:
            await asyncio.to_thread(self.storage.delete_job, job_id)
            raise Unavailable("the job queue is unreachable; retry later") from None
        if reply in (b"full", "full"):
            await asyncio.to_thread(self.storage.delete_job, job_id)
            raise Unavailable(f"the {task} queue is full; retry later", retry_after=10)
        return job_id

    async def raw(self, job_id: str) -> dict | None:
        try:
            uuid.UUID(job_id)
        except ValueError:
            return None
        try:
            raw = await self._view(keys=[js.job_key(job_id)], args=[job_id])
        except REDIS_DOWN:
            raise Unavailable("the job store is unreachable; retry later") from None
        return js.decode_hash(raw) if raw else None

    async def get(self, job_id: str, owner: str | None = None) -> dict:
        """The job's hash; with `owner` (API keys on), another key's job is as unknown as no job."""
        h = await self.raw(job_id)
        if h is None or (owner is not None and h.get("owner", "") != owner):
            raise NotFound()
        return h

    async def cancel(self, job_id: str, owner: str | None = None) -> dict:
        await self.get(job_id, owner)
        now = js.now()
        error = {"code": "canceled", "message": "canceled by request"}
        progress = {"stage": "done", "step": 0, "total_steps": 0, "fraction": 1.0}
        try:
            status = await self._cancel(
                keys=[js.job_key(job_id)],
                args=[job_id, repr(now), self.settings.job_ttl_s, js.dumps(error),
                      js.dumps({"type": "done", "status": "canceled"}), js.dumps(progress)],
            )
        except REDIS_DOWN:
            raise Unavailable("the job store is unreachable; retry later") from None
        status = status.decode() if isinstance(status, bytes) else status
        if status is None:
            raise NotFound()
        if status == "ended":
            raise Conflict("the job has already ended")
        return await self.get(job_id)

    async def wait(self, job_id: str, timeout: float, owner: str | None = None) -> dict:
        """The job's hash once it is terminal, or when `timeout` seconds have passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self.hub.subscribe(job_id) as events:
            h = await self.get(job_id, owner)
            while h["status"] not in js.TERMINAL:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(events.get(), min(remaining, 5.0))
                except asyncio.TimeoutError:
                    event = {"type": "recheck"}
                if event.get("type") != "progress":
                    h = await self.get(job_id)
            return h
