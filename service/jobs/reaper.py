"""The reaper: no job stays `running` without a live worker, and none is lost between queue and worker.

Runs in every API process every few seconds; each move is an atomic script, so several reapers at
once are safe. It ends or requeues:
- running jobs whose worker's heartbeat has expired (killed, crashed, machine gone): `failed` with
  `worker_lost`, or back to the queue once when the request allowed a retry (protocol.reap);
- running jobs far past their task's timeout (a worker stuck in a call SIGALRM cannot interrupt):
  `failed` with `timeout` (protocol.fail_stuck);
- queued jobs found in no RQ queue list or fair-share set, or taken off them by a worker that died
  before it started them: back on their queue (protocol.restore).
It also deletes the files of jobs whose record has expired (local storage; S3 expires by lifecycle).
"""

from __future__ import annotations

import asyncio
import logging

from service.jobs import keys, protocol
from service.jobs.heartbeats import is_alive
from service.jobs.states import JobStatus
from service.redis import REDIS_DOWN
from service.tasks import TASK_NAMES

log = logging.getLogger("fresco.reaper")
RESTORE_AFTER_S = 10.0  # a queued job missing from its list this long was lost in a pop
STUCK_GRACE_S = 60.0  # beyond the task timeout, on top of RQ's own alarm
RESULTS_SWEEP_EVERY_S = 600.0  # how often expired jobs' files are looked for
RESULTS_MIN_AGE_S = 3600.0  # a job folder younger than this is never deleted (its record may be on its way)


def _priority(raw: bytes | None) -> str:
    """A record's priority class (a job queued before priorities has none: normal)."""
    return raw.decode() if raw else "normal"


class Reaper:
    def __init__(self, redis, settings, storage=None):
        self.redis, self.settings, self.storage = redis, settings, storage
        self._last_results_sweep = 0.0
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()

    def start(self, interval: float) -> None:
        self._task = asyncio.create_task(self._loop(interval), name="fresco-reaper")

    async def stop(self) -> None:
        # redis-py can absorb a cancel inside a command, so the loop also waits on an event.
        self._stopping.set()
        if self._task:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2)

    async def _loop(self, interval: float) -> None:
        while not self._stopping.is_set():
            try:
                await self.sweep()
                if self.storage is not None and protocol.now() - self._last_results_sweep > RESULTS_SWEEP_EVERY_S:
                    self._last_results_sweep = protocol.now()
                    await self.expire_results()
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN:
                pass  # nothing to do until Redis is back
            except Exception:
                log.exception("reaper sweep failed")
            try:
                await asyncio.wait_for(self._stopping.wait(), interval)
            except asyncio.TimeoutError:
                pass

    async def sweep(self) -> dict[str, int]:
        now = protocol.now()
        counts = {"worker_lost": 0, "requeued": 0, "timeout": 0, "restored": 0}
        for task in TASK_NAMES:
            running = await self.redis.zrange(keys.status_index(task, JobStatus.RUNNING), 0, -1, withscores=True)
            for raw_id, started in running:
                await self._check_running(raw_id.decode(), task, started, now, counts)
            queued = keys.status_index(task, JobStatus.QUEUED)
            for raw_id in await self.redis.zrangebyscore(queued, "-inf", now - RESTORE_AFTER_S):
                job_id = raw_id.decode()
                model, priority = await self.redis.hmget(keys.job(job_id), "model", "priority")
                if model is None:
                    await self.redis.zrem(queued, job_id)  # expired record
                    continue
                if await protocol.restore(job_id, task, model.decode(), priority=_priority(priority),
                                          at=now).arun(self.redis):
                    counts["restored"] += 1
                    log.warning("job %s (%s) was in no queue; put back", job_id, task)
        return counts

    async def expire_results(self, min_age_s: float = RESULTS_MIN_AGE_S) -> int:
        """Delete the files of jobs that no longer exist. Only folders untouched for `min_age_s`: a new
        job's input image is written just before its record."""
        ids = await asyncio.to_thread(self.storage.jobs_older_than, min_age_s)
        if not ids:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.exists(keys.job(job_id))
            alive = await pipe.execute()
        gone = [job_id for job_id, exists in zip(ids, alive) if not exists]
        for job_id in gone:
            await asyncio.to_thread(self.storage.delete_job, job_id)
        if gone:
            log.info("deleted the files of %d expired jobs", len(gone))
        return len(gone)

    async def _check_running(self, job_id: str, task: str, started: float, now: float, counts: dict) -> None:
        worker, model, priority = await self.redis.hmget(keys.job(job_id), "worker", "model", "priority")
        if worker is None or model is None:
            return
        worker = worker.decode()
        ttl = self.settings.job_ttl_s
        if not await is_alive(self.redis, worker):
            outcome = await protocol.reap(job_id, task, model.decode(), worker=worker, ttl=ttl, at=now,
                                          priority=_priority(priority)).arun(self.redis)
            if outcome:
                counts["requeued" if outcome is JobStatus.QUEUED else "worker_lost"] += 1
                log.warning("job %s (%s): worker %s lost; %s", job_id, task, worker,
                            "requeued" if outcome is JobStatus.QUEUED else "failed")
            return
        timeout = self.settings.job_timeout_s[task]
        if now - started > timeout + STUCK_GRACE_S:
            message = f"the job ran past the {task} timeout and its worker is stuck"
            if await protocol.fail_stuck(job_id, task, message=message, ttl=ttl, at=now).arun(self.redis):
                counts["timeout"] += 1
                log.warning("job %s (%s) stuck on worker %s past its timeout; failed", job_id, task, worker)
