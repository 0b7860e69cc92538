"""run_job(payload): the one RQ entry point. Parse -> pipeline -> run -> encode -> store -> job view.

The worker process loads its models into a `Runtime` at start; RQ's SimpleWorker then calls
`run_job` in the same process for every job, so nothing is loaded per job.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import time
from typing import Any

import torch
from PIL import Image
from rq.timeouts import JobTimeoutException

from service import jobstore as js
from service.catalog import Catalog
from service.settings import Settings
from service.storage import Storage
from service import heartbeats
from workers import faults, metrics
from workers.encode import CONTENT_TYPES, EXTENSIONS, encode_image, encode_video
from workers.models import LoadedModel, load_model
from workers.pipelines.base import Output, TaskPipeline
from workers.pipelines.registry import PIPELINES
from workers.progress import JobCanceled, Progress

log = logging.getLogger("fresco.jobs")
_RUNTIME: "Runtime | None" = None


class InvalidInput(Exception):
    """The job cannot run as asked (e.g. this worker lacks the model); a client-side failure."""


class JobFailed(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def run_job(payload: dict) -> dict:
    if _RUNTIME is None:
        raise RuntimeError("run_job runs inside a Fresco worker, whose runtime loads the models first")
    return _RUNTIME.run(payload)


class Runtime:
    """The resident models and task pipelines of one worker process, and how a job runs on them."""

    def __init__(self, settings: Settings, catalog: Catalog, redis, storage: Storage, name: str):
        self.settings, self.catalog, self.redis, self.storage, self.name = settings, catalog, redis, storage, name
        self.models: dict[str, LoadedModel] = {}
        self.pipelines: dict[tuple[str, str], TaskPipeline] = {}
        self.current_job: str | None = None
        self._transition = redis.register_script(js.TRANSITION)
        self._progress = redis.register_script(js.PROGRESS)

    # ---- start-up ----

    def load(self) -> "Runtime":
        for task in self.settings.worker_tasks:
            for name in self.catalog.models_for(task):
                if name not in self.models:
                    model = self.models[name] = load_model(self.catalog.spec(name))
                    metrics.MODEL_LOAD_SECONDS.labels(name).set(model.load_s)
                    metrics.MODEL_LOADS.labels(name).inc()
                self.pipelines[(task, name)] = PIPELINES[task](self.models[name])
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

    def _move(self, job_id: str, allowed: tuple[str, ...], to: str, event: dict | None, ttl: int = 0, **fields) -> bool:
        args: list[Any] = [job_id, ",".join(allowed), to, repr(js.now()), ttl, js.dumps(event) if event else ""]
        for key, value in fields.items():
            args += [key, value if isinstance(value, str) else js.dumps(value)]
        reply = self._transition(keys=[js.job_key(job_id)], args=args)
        return bool(reply) and int(reply[0]) == 1

    def _report(self, job_id: str, state: dict) -> bool:
        event = js.dumps({"type": "progress", "status": "running", "progress": state})
        return bool(self._progress(keys=[js.job_key(job_id)], args=[job_id, js.dumps(state), event]))

    def _end(self, job_id: str, task: str, status: str, progress: dict, created: float, **fields) -> None:
        finished = js.now()
        self._move(job_id, ("running",), status, {"type": "done", "status": status}, ttl=self.settings.job_ttl_s,
                   finished_at=repr(finished), progress=progress, **fields)
        outcome = status if status != "failed" else f"failed_{fields['error']['code']}"
        metrics.JOBS_FINISHED.labels(task, outcome).inc()

    # ---- one job ----

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
        metrics.JOB_PHASE_SECONDS.labels(task, "queue_wait").observe(max(0.0, started - created))
        metrics.BUSY.set(1)
        self.current_job = job_id
        progress = Progress(lambda state: self._report(job_id, state), plan)
        try:
            if pipeline is None:
                raise JobFailed("invalid_input", f"this worker does not serve model {model_name} for {task}")
            result, timings, warnings = self._execute(job_id, task, pipeline, params, progress)
            timings["queue_s"] = round(started - created, 4)
            timings["total_s"] = round(js.now() - created, 4)
            self._end(job_id, task, "succeeded", progress.finished(), created, result=result, timings=timings,
                      warnings=warnings)
            log.info("job %s (%s) succeeded in %.3fs", job_id, task, timings["total_s"])
            return {"status": "succeeded"}
        except JobCanceled:
            self._end(job_id, task, "canceled", progress.state(), created,
                      error={"code": "canceled", "message": "canceled by request"})
            log.info("job %s (%s) canceled at %s step %s", job_id, task, progress.stage, progress.step)
            return {"status": "canceled"}
        except JobTimeoutException:
            self._fail(job_id, task, progress, created, "timeout",
                       f"the job ran past the {task} timeout of {self.settings.job_timeout_s.get(task)} s")
        except torch.cuda.OutOfMemoryError:
            metrics.GPU_OOMS.labels(task).inc()
            self._fail(job_id, task, progress, created, "gpu_oom", "the GPU ran out of memory; try a smaller size")
        except JobFailed as exc:
            self._fail(job_id, task, progress, created, exc.code, exc.message)
        except Exception as exc:
            log.exception("job %s (%s) failed", job_id, task)
            if faults.is_sticky_cuda_error(exc):
                self._fail(job_id, task, progress, created, "internal",
                           "the GPU hit an unrecoverable error; the worker restarts")
                self._exit_for_restart()
            self._fail(job_id, task, progress, created, "internal", "the job failed on the worker; see its log")
        finally:
            self.current_job = None
            metrics.BUSY.set(0)
        # Outside the except blocks, so the traceback (and the tensors its frames hold) are gone.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"status": "failed"}

    def _exit_for_restart(self) -> None:
        """A sticky CUDA error poisons this process's context: leave, so the supervisor starts anew."""
        log.critical("sticky GPU error: worker %s exits for a restart", self.name)
        try:
            heartbeats.forget(self.redis, self.name)
        finally:
            logging.shutdown()
            os._exit(3)

    def _fail(self, job_id, task, progress, created, code, message):
        self._end(job_id, task, "failed", progress.state(), created, error={"code": code, "message": message})

    def _execute(self, job_id: str, task: str, pipeline: TaskPipeline, params: dict, progress: Progress):
        fault = faults.requested(params, self.settings.fault_injection)
        if fault:
            progress.step_hook = lambda step: faults.at_step(fault, step)
        image = None
        if isinstance(params.get("image"), dict):
            data = self.storage.get(job_id, params["image"]["name"])
            image = Image.open(io.BytesIO(data)).convert("RGB")
        # 1. inference
        t0 = time.perf_counter()
        with torch.inference_mode():
            output: Output = pipeline.run(params, image, progress)
        t1 = time.perf_counter()
        # 2. encode
        progress.post("encode")
        files, result = self._encode(output, params)
        t2 = time.perf_counter()
        # 3. store
        progress.post("store")
        try:
            for name, data in files:
                self.storage.put(job_id, name, data)
        except OSError as exc:  # a full disk, a lost mount: the write left nothing behind
            raise JobFailed("internal", f"storing the result failed: {exc.strerror or type(exc).__name__}") from None
        t3 = time.perf_counter()
        for phase, seconds in (("inference", t1 - t0), ("encode", t2 - t1), ("store", t3 - t2)):
            metrics.JOB_PHASE_SECONDS.labels(task, phase).observe(seconds)
        timings = {"inference_s": round(t1 - t0, 4), "encode_s": round(t2 - t1, 4), "store_s": round(t3 - t2, 4)}
        return result, timings, output.warnings

    @staticmethod
    def _encode(output: Output, params: dict):
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
            files.append((name, encode_image(img, fmt)))
            images.append({"name": name, "content_type": content_type, "width": img.width, "height": img.height,
                           "seed": (params["seed"] + i) % 2**32})
        return files, {"images": images}
