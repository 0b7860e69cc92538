"""run_job(payload): the one RQ entry point. Parse -> pipeline -> run -> encode -> store -> job view.

The worker process loads its models into a `Runtime` at start; RQ's SimpleWorker then calls
`run_job` in the same process for every job, so nothing is loaded per job.

Dynamic batching (FRESCO_WORKER_BATCH_SIZE > 1): the job RQ hands over leads a batch. The worker
takes compatible jobs still waiting on the same RQ queue (same task and model, and the pipeline's
`batch_key`: size, steps, guidance, scheduler...) off the list itself, atomically (BATCH_CLAIM in
service/jobstore.py), up to the batch size in images, waiting up to FRESCO_WORKER_BATCH_WAIT_MS for
more to arrive, and runs them in one pipeline call. Each job keeps its own seed (generators), progress
(every step is reported to each job, in one Redis round trip), result, timings and cancel:

- a job canceled mid-batch ends `canceled` at that step, at once, as it would alone; the batch runs
  on for the others (their images do not depend on it) and its image is thrown away; when every job
  of the batch is canceled, the pipeline stops at once;
- a failure of the call (out of memory, timeout, a bug) fails every job still running in it.

Jobs taken this way are never seen by RQ's bookkeeping: their RQ job hashes are marked started by
this worker, and deleted when they end, as RQ deletes the hash of the job it ran (result_ttl=0). They
carry this worker's name like any running job, so the reaper fails or requeues them if it dies.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from redis import exceptions as redis_errors
from rq.timeouts import JobTimeoutException

from service import heartbeats
from service import jobstore as js
from service.catalog import Catalog
from service.settings import Settings
from service.storage import Storage
from workers import faults, metrics
from workers.encode import CONTENT_TYPES, EXTENSIONS, encode_image, encode_video
from workers.models import LoadedModel, freeze_compiled, load_model, warm_up
from workers.pipelines.base import Output, TaskPipeline
from workers.pipelines.registry import PIPELINES
from workers.progress import JobCanceled, Progress

log = logging.getLogger("fresco.jobs")
_RUNTIME: "Runtime | None" = None
PEEK_WINDOW = 64  # queue entries looked at for compatible jobs


REDIS_DOWN = (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.BusyLoadingError)
END_RETRY_S = 300.0  # how long a finished job's outcome waits for Redis to come back


def _until_redis_answers(write, what: str) -> None:
    """A job's final state must be written, or it would look running until the reaper's stuck-job
    timeout: through a Redis outage, keep trying (with a growing pause) for a few minutes."""
    deadline, pause = time.monotonic() + END_RETRY_S, 0.1
    while True:
        try:
            return write()
        except REDIS_DOWN:
            if time.monotonic() > deadline:
                raise
            log.warning("%s: Redis unreachable; retrying in %.1fs", what, pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


class JobFailed(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def run_job(payload: dict) -> dict:
    if _RUNTIME is None:
        raise RuntimeError("run_job runs inside a Fresco worker, whose runtime loads the models first")
    return _RUNTIME.run(payload)


@dataclass
class Member:
    """One job of a batch (a batch of one when batching is off)."""

    id: str
    params: dict
    created: float
    started: float
    claimed: bool = False  # taken off the queue by this worker, not handed over by RQ
    image: Any = None
    output: Output | None = None
    ended: bool = False
    status: str = "running"
    timings: dict = field(default_factory=dict)


class Runtime:
    """The resident models and task pipelines of one worker process, and how a job runs on them."""

    def __init__(self, settings: Settings, catalog: Catalog, redis, storage: Storage, name: str):
        self.settings, self.catalog, self.redis, self.storage, self.name = settings, catalog, redis, storage, name
        self.models: dict[str, LoadedModel] = {}
        self.pipelines: dict[tuple[str, str], TaskPipeline] = {}
        self.current_job: str | None = None
        self.current_jobs: list[str] = []
        self.batch_size = settings.worker_batch_size
        self.batch_wait_s = settings.worker_batch_wait_ms / 1000
        self._transition = redis.register_script(js.TRANSITION)
        self._progress = redis.register_script(js.PROGRESS)
        self._peek = redis.register_script(js.BATCH_PEEK)
        self._claim = redis.register_script(js.BATCH_CLAIM)
        self._encoders: ThreadPoolExecutor | None = None

    # ---- start-up ----

    def load(self) -> "Runtime":
        for task in self.settings.worker_tasks:
            for name in self.catalog.models_for(task):
                if name not in self.models:
                    model = self.models[name] = load_model(self.catalog.spec(name))
                    metrics.MODEL_LOAD_SECONDS.labels(name).set(model.load_s)
                    metrics.MODEL_LOADS.labels(name).inc()
                self.pipelines[(task, name)] = PIPELINES[task](self.models[name])
        if self.batch_size > 1:
            # A batch decodes (and img2img encodes) one image at a time: the VAE works at full image
            # resolution, so a whole batch at once only adds memory (and, on a CPU, cache misses:
            # without this a batch of 16 tiny Turbo jobs ran 0.6x as fast as one at a time, with it 1.5x).
            for model in self.models.values():
                for pipe in (model.pipe, model.refiner):
                    if pipe is not None and getattr(pipe, "vae", None) is not None:
                        pipe.vae.enable_slicing()
        return self

    def warm_up(self) -> "Runtime":
        """Run each pipeline once per size bucket (and batch size), so the first request pays no
        compilation, autotuning or lazy initialisation. Models with `compile` always warm up."""
        compiled = False
        for (task, name), pipeline in self.pipelines.items():
            spec = self.catalog.spec(name)
            if self.settings.worker_warmup or spec.compile:
                seconds = warm_up(pipeline, spec, self.batch_size)
                log.info("warmed up %s for %s in %.2fs", name, task, seconds)
                compiled = compiled or spec.compile
        if compiled:
            freeze_compiled()
        return self

    @property
    def tasks(self) -> list[str]:
        return sorted({task for task, _ in self.pipelines})

    @property
    def serves(self) -> list[str]:
        return sorted(js.serves(task, model) for task, model in self.pipelines)

    def install(self) -> None:
        global _RUNTIME
        _RUNTIME = self

    # ---- state changes (atomic scripts shared with the API) ----

    def _move(self, job_id: str, allowed: tuple[str, ...], to: str, event: dict | None, ttl: int = 0,
              client=None, **fields) -> bool:
        args: list[Any] = [job_id, ",".join(allowed), to, repr(js.now()), ttl, js.dumps(event) if event else ""]
        for key, value in fields.items():
            args += [key, value if isinstance(value, str) else js.dumps(value)]
        reply = self._transition(keys=[js.job_key(job_id)], args=args, client=client)
        return client is None and bool(reply) and int(reply[0]) == 1

    def _end(self, member: Member, task: str, status: str, progress: dict, **fields) -> None:
        """End one job (once): the final transition, and for a job this worker took off the queue
        itself, the RQ job hash RQ would have deleted."""
        if member.ended:
            return
        member.ended, member.status = True, status
        finished = js.now()
        event = {"type": "done", "status": status}

        def write():
            if member.claimed:
                with self.redis.pipeline(transaction=False) as pipe:
                    self._move(member.id, ("running",), status, event, ttl=self.settings.job_ttl_s, client=pipe,
                               finished_at=repr(finished), progress=progress, **fields)
                    pipe.delete(js.rq_job_key(member.id))
                    pipe.execute()
            else:
                self._move(member.id, ("running",), status, event, ttl=self.settings.job_ttl_s,
                           finished_at=repr(finished), progress=progress, **fields)

        _until_redis_answers(write, f"ending job {member.id}")
        outcome = status if status != "failed" else f"failed_{fields['error']['code']}"
        metrics.JOBS_FINISHED.labels(task, outcome).inc()

    def _fail_all(self, members: list[Member], task: str, progress: Progress, code: str, message: str) -> None:
        for m in members:
            self._end(m, task, "failed", progress.state(), error={"code": code, "message": message})

    def _report(self, task: str, members: list[Member], progress_state: dict) -> bool:
        """Report a progress state to every running job of the batch, in one round trip. Jobs whose
        cancel flag is set end `canceled` here, at once. True (stop the pipeline) when none is left."""
        active = [m for m in members if not m.ended]
        state, event = js.dumps(progress_state), js.dumps({"type": "progress", "status": "running",
                                                             "progress": progress_state})
        try:
            if len(active) == 1:
                replies = [self._progress(keys=[js.job_key(active[0].id)], args=[active[0].id, state, event])]
            else:
                with self.redis.pipeline(transaction=False) as pipe:
                    for m in active:
                        self._progress(keys=[js.job_key(m.id)], args=[m.id, state, event], client=pipe)
                    replies = pipe.execute()
        except REDIS_DOWN:
            # Redis away for a moment: this step's progress is lost, the job goes on.
            log.warning("progress of %s not recorded: Redis unreachable", [m.id for m in active])
            return False
        canceled = [m for m, reply in zip(active, replies) if reply]
        if len(canceled) == len(active):
            return True  # the pipeline stops; the caller ends them
        for m in canceled:
            self._end(m, task, "canceled", progress_state, error={"code": "canceled", "message": "canceled by request"})
            log.info("job %s (%s) canceled at %s step %s; its batch goes on", m.id, task, progress_state["stage"],
                     progress_state["step"])
        return False

    # ---- batching ----

    def _gather(self, task: str, model_name: str, pipeline: TaskPipeline, leader: Member,
                first: dict) -> list[Member]:
        """Compatible jobs waiting on this job's queue, taken off it atomically: up to the batch size in
        images, waiting up to the batch wait for more to arrive."""
        if faults.requested(leader.params, self.settings.fault_injection):
            return []
        key = pipeline.batch_key(leader.params)
        room = self.batch_size - leader.params.get("num_images", 1)
        if key is None or room <= 0:
            return []
        queue = js.rq_queue_key(task, model_name)
        event = js.dumps({"type": "progress", "status": "running", "progress": first})
        deadline = time.monotonic() + self.batch_wait_s
        taken: list[Member] = []
        while True:
            raw = self._peek(keys=[queue], args=[PEEK_WINDOW])
            chosen, budget = [], room
            for raw_id, raw_params in zip(raw[::2], raw[1::2]):
                params = json.loads(raw_params)
                n = params.get("num_images", 1)
                if n <= budget and pipeline.batch_key(params) == key and \
                        not faults.requested(params, self.settings.fault_injection):
                    chosen.append(raw_id.decode() if isinstance(raw_id, bytes) else raw_id)
                    budget -= n
            if chosen:
                now = js.now()
                reply = self._claim(keys=[queue], args=[repr(now), self.name, js.dumps(first), event, *chosen])
                for raw_id, raw_params, raw_created in zip(reply[::3], reply[1::3], reply[2::3]):
                    params = json.loads(raw_params)
                    taken.append(Member(raw_id.decode() if isinstance(raw_id, bytes) else raw_id, params,
                                        float(raw_created), now, claimed=True))
                    room -= params.get("num_images", 1)
            remaining = deadline - time.monotonic()
            if room <= 0 or remaining <= 0:
                return taken
            time.sleep(min(0.002, remaining))

    # ---- one job (and the jobs batched with it) ----

    def run(self, payload: dict) -> dict:
        job_id, task, model_name = payload["id"], payload["task"], payload["model"]
        raw_params, raw_created = self.redis.hmget(js.job_key(job_id), "params", "created_at")
        if raw_params is None:
            log.warning("job %s is gone (expired or deleted); skipped", job_id)
            return {"status": "missing"}
        params, created = json.loads(raw_params), float(raw_created)
        pipeline = self.pipelines.get((task, model_name))
        plan = pipeline.plan(params) if pipeline else [("denoise", 1)]
        started = js.now()
        first = {"stage": plan[0][0], "step": 0, "total_steps": plan[0][1], "fraction": 0.0}
        if not self._move(job_id, ("queued",), "running", {"type": "progress", "status": "running", "progress": first},
                          started_at=repr(started), worker=self.name, progress=first):
            return {"status": "skipped"}  # canceled while queued
        leader = Member(job_id, params, created, started)
        members = [leader]
        if pipeline is not None and self.batch_size > 1:
            members += self._gather(task, model_name, pipeline, leader, first)
        self._run(task, model_name, pipeline, members, plan, first)
        return {"status": leader.status}

    def _run(self, task: str, model_name: str, pipeline: TaskPipeline | None, members: list[Member], plan,
             first: dict | None = None) -> None:
        for m in members:
            metrics.JOB_PHASE_SECONDS.labels(task, "queue_wait").observe(max(0.0, m.started - m.created))
        metrics.BATCH_SIZE.labels(task).observe(sum(m.params.get("num_images", 1) for m in members))
        metrics.BUSY.set(1)
        self.current_job, self.current_jobs = members[0].id, [m.id for m in members]
        progress = Progress(lambda state: self._report(task, members, state), plan, published=first)
        try:
            if pipeline is None:
                raise JobFailed("invalid_input", f"this worker does not serve model {model_name} for {task}")
            self._execute(task, pipeline, members, progress)
            if len(members) > 1:
                log.info("batch of %d %s jobs done in %.3fs", len(members), task,
                         members[0].timings.get("inference_s", 0.0))
            return
        except JobCanceled:
            for m in members:
                if not m.ended:
                    self._end(m, task, "canceled", progress.state(),
                              error={"code": "canceled", "message": "canceled by request"})
                    log.info("job %s (%s) canceled at %s step %s", m.id, task, progress.stage, progress.step)
            return
        except JobTimeoutException:
            self._fail_all(members, task, progress, "timeout",
                           f"the job ran past the {task} timeout of {self.settings.job_timeout_s.get(task)} s")
        except torch.cuda.OutOfMemoryError:
            metrics.GPU_OOMS.labels(task).inc()
            self._fail_all(members, task, progress, "gpu_oom", "the GPU ran out of memory; try a smaller size")
        except JobFailed as exc:
            self._fail_all(members, task, progress, exc.code, exc.message)
        except Exception as exc:
            log.exception("job %s (%s) failed", members[0].id, task)
            if faults.is_sticky_cuda_error(exc):
                self._fail_all(members, task, progress, "internal",
                               "the GPU hit an unrecoverable error; the worker restarts")
                self._exit_for_restart()
            self._fail_all(members, task, progress, "internal", "the job failed on the worker; see its log")
        finally:
            self.current_job, self.current_jobs = None, []
            metrics.BUSY.set(0)
        # Outside the except blocks, so the traceback (and the tensors its frames hold) are gone.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _exit_for_restart(self) -> None:
        """A sticky CUDA error poisons this process's context: leave, so the supervisor starts anew."""
        log.critical("sticky GPU error: worker %s exits for a restart", self.name)
        try:
            heartbeats.forget(self.redis, self.name)
        finally:
            logging.shutdown()
            os._exit(3)

    def _execute(self, task: str, pipeline: TaskPipeline, members: list[Member], progress: Progress) -> None:
        if len(members) == 1:
            fault = faults.requested(members[0].params, self.settings.fault_injection)
            if fault:
                progress.step_hook = lambda step: faults.at_step(fault, step)
        for m in members:
            if isinstance(m.params.get("image"), dict):
                data = self.storage.get(m.id, m.params["image"]["name"])
                m.image = Image.open(io.BytesIO(data)).convert("RGB")
        # 1. inference: one pipeline call for the whole batch
        t0 = time.perf_counter()
        with torch.inference_mode():
            outputs = pipeline.run_batch([(m.params, m.image) for m in members], progress)
        t1 = time.perf_counter()
        for m, output in zip(members, outputs):
            m.output, m.image = output, None
            m.timings["inference_s"] = round(t1 - t0, 4)
        # 2. encode (the images of a batch on several threads: zlib, libjpeg and libwebp release the GIL)
        progress.post("encode")
        live = [m for m in members if not m.ended]  # canceled mid-batch: their images are dropped
        encoded = self._encode_all(live)
        # 3. store, and each job ends as soon as its files are stored
        progress.post("store")
        for m, (files, result, encode_s) in zip(live, encoded):
            if m.ended:
                continue
            t2 = time.perf_counter()
            try:
                for name, data in files:
                    self.storage.put(m.id, name, data)
            except OSError as exc:  # a full disk, a lost mount: the write left nothing behind
                self._end(m, task, "failed", progress.state(), error={
                    "code": "internal",
                    "message": f"storing the result failed: {exc.strerror or type(exc).__name__}"})
                continue
            t3 = time.perf_counter()
            timings = {"inference_s": m.timings["inference_s"], "encode_s": round(encode_s, 4),
                       "store_s": round(t3 - t2, 4), "queue_s": round(m.started - m.created, 4)}
            for phase, seconds in (("inference", t1 - t0), ("encode", encode_s), ("store", t3 - t2)):
                metrics.JOB_PHASE_SECONDS.labels(task, phase).observe(seconds)
            timings["total_s"] = round(js.now() - m.created, 4)
            m.timings = timings
            self._end(m, task, "succeeded", progress.finished(), result=result, timings=timings,
                      warnings=m.output.warnings)
            log.info("job %s (%s) succeeded in %.3fs", m.id, task, timings["total_s"])

    def _encode_all(self, members: list[Member]) -> list[tuple[list, dict, float]]:
        """Each job's files and result, with the seconds its encoding took."""
        level = self.settings.png_level

        def one(m: Member, threads: int | None):
            t = time.perf_counter()
            files, result = self._encode(m.output, m.params, level, threads)
            return files, result, time.perf_counter() - t

        images = sum(len(m.output.images) for m in members)
        if len(members) <= 1 or images <= 1:
            return [one(m, None) for m in members]
        if self._encoders is None:
            self._encoders = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)),
                                                thread_name_prefix="fresco-encode")
        return list(self._encoders.map(lambda m: one(m, 1), members))

    @staticmethod
    def _encode(output: Output, params: dict, png_level: int = -1, threads: int | None = None):
        fmt = params["output_format"]
        ext, content_type = EXTENSIONS[fmt], CONTENT_TYPES[fmt]
        if output.frames is not None:
            frames = output.frames
            name = f"video.{ext}"
            video = {"name": name, "content_type": content_type, "width": int(frames.shape[2]),
                     "height": int(frames.shape[1]), "num_frames": int(frames.shape[0]), "fps": params["fps"],
                     "seed": params["seed"]}
            return [(name, encode_video(frames, params["fps"], fmt))], {"video": video}
        files, images = [], []
        for i, img in enumerate(output.images):
            name = f"{i}.{ext}"
            files.append((name, encode_image(img, fmt, png_level, threads)))
            images.append({"name": name, "content_type": content_type, "width": img.width, "height": img.height,
                           "seed": (params["seed"] + i) % 2**32})
        return files, {"images": images}
