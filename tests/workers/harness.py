"""An in-process worker for the worker tests: a real Redis (its own, embedded), jobs submitted with the
API's own protocol.submit, and a real `JobRunner` on a `Runtime` with the tiny pipelines. `pop_and_run`
does what RQ's worker does around `run_job`: pop the next job id off the queue list, fetch its RQ
job, run it, delete the RQ job hash (result_ttl=0)."""

from __future__ import annotations

import io
import json
import uuid

import numpy as np
from PIL import Image
from rq.job import Job
from rq.serializers import JSONSerializer

from service.jobs import keys, protocol
from service.settings import Settings
from service.storage import LocalStorage


def submit(redis, task: str, model: str, params: dict, *, retries: int = 0, timeout: int = 600) -> str:
    """Enqueue as POST /generate does: Fresco's job record, the queued index, RQ's job hash and list entry."""
    job_id = str(uuid.uuid4())
    assert protocol.submit(job_id, task, model, params, owner=None, retries=retries, timeout_s=timeout,
                           cap=0).run(redis)
    return job_id


def pop_and_run(runner, redis, task: str, model: str) -> dict | None:
    """One turn of RQ's worker loop, without RQ's process machinery (signals, alarms), then a wait for
    the finishing stage: the job's status once it has ended."""
    raw = redis.lpop(keys.rq_queue(task, model))
    if raw is None:
        return None
    job_id = raw.decode()
    rq_job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    try:
        outcome = runner.run(rq_job.args[0])
    finally:
        redis.delete(keys.rq_job(job_id))
    assert runner.finisher.drain(60), "the finishing stage did not end its jobs within a minute"
    return {"status": job(redis, job_id)["status"]} if outcome["status"] == "finishing" else outcome


def job(redis, job_id: str) -> dict:
    h = protocol.decode_hash(redis.hgetall(keys.job(job_id)))
    for key in ("params", "progress", "result", "error", "timings"):
        if h.get(key):
            h[key] = json.loads(h[key])
    return h


def image(storage: LocalStorage, job_id: str, index: int = 0) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(storage.get(job_id, f"{index}.png"))), dtype=np.int16)


def same_pixels(a: np.ndarray, b: np.ndarray) -> bool:
    """The tolerance of tests/e2e/test_tasks.py: batched float kernels may round differently, so at
    most one level off, in under 1% of the pixels."""
    return a.shape == b.shape and np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01


def settings(redis_url: str, tmp_path, **overrides) -> Settings:
    """A worker's settings; each job stored before `pop_and_run` returns, unless `worker_pending_outputs` is
    given (then the runner also takes the next waiting jobs itself: tests/workers/test_finishing.py)."""
    return Settings(**{"redis_url": redis_url, "data_dir": tmp_path, "worker_tasks": ["turbo"],
                       "worker_pending_outputs": 0, **overrides})


def make_runner(redis_url: str, data, name: str, catalog, **overrides):
    """A worker's job runner, in this process: the tiny models of `worker_tasks` loaded, results in
    `data`/results."""
    from service.redis import sync_client
    from workers.jobs import JobRunner
    from workers.runtime import Runtime

    s = settings(redis_url, data, **overrides)
    return JobRunner(Runtime(s, catalog).load(), sync_client(redis_url), LocalStorage(data / "results"), s, name)


def turbo(seed: int, size: int = 256, steps: int = 1, prompt: str | None = None, num_images: int = 1) -> dict:
    return {"prompt": prompt or f"a fox number {seed}", "width": size, "height": size, "steps": steps,
            "num_images": num_images, "seed": seed, "guidance_scale": 0.0, "output_format": "png"}
