"""The reaper: no job stays `running` without a live worker, and none is lost between queue and worker.

Runs in every API process every few seconds; each move is an atomic script, so several reapers at
once are safe. It ends or requeues:
- running jobs whose worker's heartbeat has expired (killed, crashed, machine gone): `failed` with
  `worker_lost`, or back to the queue once when the request allowed a retry;
- running jobs far past their task's timeout (a worker stuck in a call SIGALRM cannot interrupt):
  `failed` with `timeout`;
- queued jobs found in no RQ queue list (popped by a worker that died before it started them).
It also deletes the files of jobs whose record has expired (local storage; S3 expires by lifecycle).
"""

from __future__ import annotations

import asyncio
import logging

from service import jobstore as js
from service.catalog import TASKS
from service.queue import REDIS_DOWN

log = logging.getLogger("fresco.reaper")
RESTORE_AFTER_S = 10.0  # a queued job missing from its list this long was lost in a pop
STUCK_GRACE_S = 60.0  # beyond the task timeout, on top of RQ's own alarm


RESULTS_SWEEP_EVERY_S = 600.0  # how often expired jobs' files are looked for


class Reaper:
    def __init__(self, redis, settings, storage=None):
        self.redis, self.settings, self.storage = redis, settings, storage
        self._last_results_sweep = 0.0
        self._reap = redis.register_script(js.REAP)
        self._restore = redis.register_script(js.RESTORE)
        self._transition = redis.register_script(js.TRANSITION)
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
                if self.storage is not None and js.now() - self._last_results_sweep > RESULTS_SWEEP_EVERY_S:
                    self._last_results_sweep = js.now()
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
        now = js.now()
        counts = {"worker_lost": 0, "requeued": 0, "timeout": 0, "restored": 0}
        for task in TASKS:
            running = await self.redis.zrange(js.state_key(task, "running"), 0, -1, withscores=True)
            for raw_id, started in running:
                job_id = raw_id.decode()
                await self._check_running(job_id, task, started, now, counts)
            stale = await self.redis.zrangebyscore(js.state_key(task, "queued"), "-inf", now - RESTORE_AFTER_S)
            for raw_id in stale:
                job_id = raw_id.decode()
                model = await self.redis.hget(js.job_key(job_id), "model")
                if model is None:
                    await self.redis.zrem(js.state_key(task, "queued"), job_id)  # expired hash
                    continue
                if await self._restore(keys=[js.job_key(job_id), js.rq_queue_key(task, model.decode()),
                                             js.rq_job_key(job_id)], args=[job_id]):
                    counts["restored"] += 1
                    log.warning("job %s (%s) was in no queue; put back", job_id, task)
        return counts

    async def expire_results(self, min_age_s: float = 3600.0) -> int:
        """Delete the files of jobs that no longer exist. Only folders untouched for `min_age_s`: a new
        job's input image is written just before its record."""
        ids = await asyncio.to_thread(self.storage.jobs_older_than, min_age_s)
        if not ids:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.exists(js.job_key(job_id))
            alive = await pipe.execute()
        gone = [job_id for job_id, exists in zip(ids, alive) if not exists]
        for job_id in gone:
            await asyncio.to_thread(self.storage.delete_job, job_id)
        if gone:
            log.info("deleted the files of %d expired jobs", len(gone))
        return len(gone)

    async def _check_running(self, job_id: str, task: str, started: float, now: float, counts: dict) -> None:
        worker, model = await self.redis.hmget(js.job_key(job_id), "worker", "model")
        if worker is None or model is None:
            return
        worker = worker.decode()
        alive = await self.redis.exists(js.worker_key(worker))
        if not alive:
            error = {"code": "worker_lost", "message": "the worker running this job stopped answering"}
            done = {"stage": "done", "step": 0, "total_steps": 0, "fraction": 1.0}
            outcome = await self._reap(
                keys=[js.job_key(job_id), js.rq_queue_key(task, model.decode())],
                args=[job_id, worker, repr(now), self.settings.job_ttl_s, js.dumps(error),
                      js.dumps({"type": "progress", "status": "queued", "progress": js.initial_progress()}),
                      js.dumps({"type": "done", "status": "failed"}), js.dumps(done)])
            if outcome:
                outcome = outcome.decode()
                counts["requeued" if outcome == "requeued" else "worker_lost"] += 1
                log.warning("job %s (%s): worker %s lost; %s", job_id, task, worker, outcome)
            return
        limit = self.settings.job_timeout_s.get(task, 600) + STUCK_GRACE_S
        if now - started > limit:
            error = {"code": "timeout", "message": f"the job ran past the {task} timeout and its worker is stuck"}
            reply = await self._transition(
                keys=[js.job_key(job_id)],
                args=[job_id, "running", "failed", repr(now), self.settings.job_ttl_s,
                      js.dumps({"type": "done", "status": "failed"}), "finished_at", repr(now), "error",
                      js.dumps(error)])
            if reply and int(reply[0]) == 1:
                counts["timeout"] += 1
                log.warning("job %s (%s) stuck on worker %s past its timeout; failed", job_id, task, worker)
