"""run_job(payload): the one RQ entry point (service/jobs/keys.py RQ_ENTRY_POINT). A job runs in
three steps, each a method of `JobRunner`:

1. start: queued -> running on this worker (protocol.start), plus the compatible jobs it batches
   with (workers/batching.py);
2. infer: the task pipeline (workers/pipelines/), reporting progress at each step and stopping when
   canceled; then finish: encode and store (workers/results.py), on a finishing thread while this one
   runs the next waiting job (workers/finishing.py), or here when none waits;
3. end: each job's final transition (protocol.end), once. Whatever went wrong, in either stage, maps
   to how the job ends through one table (`failure_for`).

A job canceled mid-batch ends `canceled` at that step, at once, as it would alone; the batch runs on
for the others (their images do not depend on it) and its output is dropped; when every job of the
batch is canceled, the pipeline stops at once. A failure of the call fails every job still running.
"""

from __future__ import annotations

import gc
import io
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image
from rq.timeouts import JobTimeoutException

from service.jobs import heartbeats, inputs, protocol
from service.jobs.states import CANCELED_BY_REQUEST, ErrorCode, JobStatus, Stage, job_error, progress
from service.redis import REDIS_DOWN
from service.settings import Settings
from service.storage import Storage
from service.tasks import TASKS
from workers import faults, metrics, previews, results, trained
from workers.batching import Batching, Member
from workers.errors import JobFailed
from workers.finishing import Finisher
from workers.pipelines.base import TaskPipeline
from workers.progress import JobCanceled, Progress
from workers.recipe import Recipes
from workers.runtime import Runtime

log = logging.getLogger("fresco.jobs")
END_RETRY_S = 300.0  # how long a finished job's outcome waits for Redis to come back
RESTART_EXIT_CODE = 3  # a worker that must be restarted (sticky GPU error) exits with this
CHAIN_S = 30.0  # how long a worker runs jobs it takes itself before it goes back to RQ's loop
NEXT_WINDOW = 4  # queue entries looked at for the next job (some may have been canceled)
EXIT_DRAIN_S = 60.0  # how long a worker that exits waits for the jobs on its finishing stage to end


@dataclass(frozen=True)
class Failure:
    code: ErrorCode
    message: str
    restart: bool = False  # the process is unusable: exit, for the supervisor to start a new one


# What went wrong -> how the job ends; the first matching type wins. Messages are shown to clients.
FAILURES: tuple[tuple[type[BaseException], ErrorCode, str], ...] = (
    (JobTimeoutException, ErrorCode.TIMEOUT, "the job ran past the {task} timeout of {timeout} s"),
    (torch.cuda.OutOfMemoryError, ErrorCode.GPU_OOM, "the GPU ran out of memory; try a smaller size"),
)
STICKY = Failure(ErrorCode.INTERNAL, "the GPU hit an unrecoverable error; the worker restarts", restart=True)
UNEXPECTED = Failure(ErrorCode.INTERNAL, "the job failed on the worker; see its log")


def failure_for(exc: BaseException, task: str, settings: Settings) -> Failure:
    if isinstance(exc, JobFailed):
        return Failure(exc.code, exc.message)
    for kind, code, message in FAILURES:
        if isinstance(exc, kind):
            return Failure(code, message.format(task=task, timeout=settings.job_timeout_s[task]))
    return STICKY if faults.is_sticky_cuda_error(exc) else UNEXPECTED


_RUNNER: "JobRunner | None" = None


def run_job(payload: dict) -> dict:
    """RQ calls this, in the worker process, with {id, task, model}; `JobRunner.serve()` bound it."""
    if _RUNNER is None:
        raise RuntimeError("run_job runs inside a Fresco worker, whose runner loads the models first")
    return _RUNNER.run(payload)


def until_redis_answers(write, what: str) -> None:
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


def set_timeout(seconds: int) -> None:
    """RQ's death penalty (SIGALRM, armed for the job RQ handed over, raising JobTimeoutException) set to
    go off in `seconds` (0: not at all): a job the worker takes itself (`JobRunner._run_chain`) gets its
    own timeout, and none runs while the worker waits for room or looks for the next job. Nothing
    outside an RQ job (no handler installed: the tests' in-process runner)."""
    handler = signal.getsignal(signal.SIGALRM)
    if threading.current_thread() is threading.main_thread() and handler not in (signal.SIG_DFL, signal.SIG_IGN,
                                                                                   None):
        signal.alarm(max(0, int(seconds)))


@dataclass
class Tail:
    """A batch whose inference is done: its running jobs, and what is left to do for them."""

    jobs: list[str]
    finish: Callable[[], None]


@dataclass
class Batch:
    """The jobs of one pipeline call (one, unless batching found compatible ones)."""

    task: str
    model: str
    pipeline: TaskPipeline | None
    members: list[Member]

    @property
    def active(self) -> list[Member]:
        return [m for m in self.members if not m.ended]


class JobRunner:
    """How a job runs on this worker's resident pipelines: start, execute, end."""

    def __init__(self, runtime: Runtime, redis, storage: Storage, settings: Settings, name: str):
        self.runtime, self.redis, self.storage, self.settings, self.name = runtime, redis, storage, settings, name
        self.batching = Batching(redis, name, settings.worker_batch_size, settings.worker_batch_wait_ms / 1000,
                                 settings.fault_injection)
        self.encoder = results.Encoder(settings.png_level)
        # What each result file carries (workers/recipe.py); the models' sources described from now on.
        self.recipes = Recipes(runtime).start() if settings.output_metadata else None
        self.finisher = Finisher(settings.worker_pending_outputs)
        self.running: list[str] = []  # the jobs of the pipeline call in progress
        self.in_hand: list[str] = []  # the jobs of the last call, inferred, not yet handed to be finished
        self.stopping = threading.Event()  # set on a stop request (SIGTERM): take no job after the one in hand

    @property
    def current_jobs(self) -> list[str]:
        """The jobs this worker holds, in either stage (shown in its heartbeat)."""
        return self.running + self.in_hand + self.finisher.holding()

    def serve(self) -> "JobRunner":
        """Make this the runner `run_job` uses in this process."""
        global _RUNNER
        _RUNNER = self
        return self

    # ---- 1. start ----

    def run(self, payload: dict) -> dict:
        """The job RQ handed over; then, with the finishing stage on, the jobs this worker takes itself."""
        job_id, task, model = payload["id"], payload["task"], payload["model"]
        loaded = protocol.load_input(self.redis, job_id)
        if loaded is None:
            log.warning("job %s is gone (expired or deleted); skipped", job_id)
            return {"status": "missing"}
        params, created, watched = loaded
        pipeline = self.runtime.pipeline(task, model)
        plan = pipeline.plan(params) if pipeline else [(Stage.DENOISE, 1)]
        first = progress(plan[0][0], total_steps=plan[0][1])
        started = protocol.now()
        if not protocol.start(job_id, task, worker=self.name, progress=first, at=started).run(self.redis):
            return {"status": "skipped"}  # canceled while queued
        leader = Member(job_id, params, created, started, watched=watched)
        self._run_chain(self._run_batch(self._batch(task, model, pipeline, leader, first), plan, first))
        return {"status": leader.status if leader.ended else "finishing"}

    def _batch(self, task: str, model: str, pipeline: TaskPipeline | None, leader: Member, first: dict) -> Batch:
        """The leader, and the compatible jobs it batches with (workers/batching.py)."""
        batch = Batch(task, model, pipeline, [leader])
        if pipeline is not None:
            batch.members += self.batching.gather(task, model, pipeline, leader, first)
        return batch

    def _run_chain(self, tail: Tail | None) -> None:
        """Finish `tail` (a batch whose inference is done). With the finishing stage on and a job waiting,
        that job is taken off its queue by this worker itself (as batching takes them: protocol.claim) and
        run while the finishing stage finishes `tail`; and so on, for up to CHAIN_S: RQ's loop costs about
        8 ms of Redis bookkeeping a job, which the device would wait through. Its queues in RQ's order
        (runtime.queues), so the next job is the one RQ would give; each job with its own timeout, over
        its inference (`set_timeout`). When none waits (or a stop was asked for: SIGTERM), this thread
        finishes the last batch itself, at once, with every core: a job alone is as fast as without the
        stage."""
        deadline = time.monotonic() + CHAIN_S
        while tail is not None:
            set_timeout(0)  # its inference is over: the rest is not under its timeout
            taken = None
            if self.finisher.pending and time.monotonic() < deadline and not self.stopping.is_set():
                self.finisher.wait_for_room()  # before the next job starts, so `submit` never waits
                try:
                    taken = self._take_next()
                except REDIS_DOWN:  # finish this batch, then back to RQ's loop, which waits for Redis
                    log.warning("looking for the next job: Redis unreachable")
                except Exception:  # never a reason to leave `tail` unfinished
                    log.exception("looking for the next job failed")
            if taken is None:
                try:
                    tail.finish()
                finally:
                    self.in_hand = []
                return
            self.finisher.submit(tail.jobs, tail.finish)
            self.in_hand = []
            tail = self._run_batch(*taken)

    def _take_next(self) -> tuple[Batch, list, dict] | None:
        """The first job waiting on this worker's queues, started on this worker: its batch, plan and
        first progress; None when none waits."""
        for task, model in self.runtime.queues():
            pipeline = self.runtime.pipeline(task, model)
            for job_id, params in protocol.peek(self.redis, task, model, NEXT_WINDOW):
                plan = pipeline.plan(params)
                first = progress(plan[0][0], total_steps=plan[0][1])
                set_timeout(self.settings.job_timeout_s[task])  # before it is claimed: its own timeout
                now = protocol.now()
                for job in protocol.claim(task, model, [job_id], worker=self.name, progress=first,
                                          at=now).run(self.redis):
                    leader = Member(job.id, job.params, job.created, now, claimed=True)
                    return self._batch(task, model, pipeline, leader, first), plan, first
        return None

    def _run_batch(self, batch: Batch, plan, first: dict) -> Tail | None:
        """Infer; what is left to do for the batch (`Tail`: encode, store, each job's end, in `_finish`), or
        None when every job of it has ended already (canceled, or failed through the table)."""
        task, members = batch.task, batch.members
        for m in members:
            metrics.JOB_PHASE_SECONDS.labels(task, "queue_wait").observe(max(0.0, m.started - m.created))
        metrics.BATCH_SIZE.labels(task).observe(sum(m.params.get("num_images", 1) for m in members))
        metrics.BUSY.set(1)
        self.running = [m.id for m in members]
        progress_ = Progress(lambda state: self.report(batch, state, progress_), plan, published=first)
        progress_.job_id = members[0].id
        try:
            inference_s = self._guarded(batch, progress_, self._infer)
        finally:
            self.running = []
            metrics.BUSY.set(0)
        if inference_s is None:
            return None
        self.in_hand = [m.id for m in batch.active]
        return Tail(self.in_hand, lambda: self._guarded(batch, progress_,
                                                        lambda b, p: self._finish(b, p, inference_s)))

    def _guarded(self, batch: Batch, progress_: Progress, stage):
        """`stage(batch, progress_)`'s value; or, when it raised, every job of the batch still running
        ended through the table (canceled, or failed), and None."""
        failure = None
        try:
            return stage(batch, progress_)
        except JobCanceled:
            for m in batch.active:
                self._cancel(batch, m, progress_.state())
        except Exception as exc:
            failure = failure_for(exc, batch.task, self.settings)
            if failure is UNEXPECTED or failure.restart:
                log.exception("job %s (%s) failed", batch.members[0].id, batch.task)
        if failure is not None:
            self._fail(batch, progress_.state(), failure)
            # Outside the except block, so the traceback's frames (and the tensors they hold) are gone:
            # free what the failed call left (an OOM's half-built activations). Not after a job that
            # ended well: a full collection costs ~0.25 s of the worker's time with diffusers loaded.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return None

    # ---- 2. infer, then finish ----

    def _infer(self, batch: Batch, progress_: Progress) -> float:
        """Decode the inputs, make the LoRAs active, run the pipeline: the seconds the call took."""
        task, members = batch.task, batch.members
        if batch.pipeline is None:
            raise JobFailed(ErrorCode.INVALID_INPUT, f"this worker does not serve model {batch.model} for {task}")
        if len(members) == 1:
            fault = faults.requested(members[0].params, self.settings.fault_injection)
            if fault:
                progress_.step_hook = lambda step: faults.at_step(fault, step)
        if self.settings.step_delay_s and progress_.step_hook is None:
            delay = self.settings.step_delay_s
            progress_.step_hook = lambda step: time.sleep(delay)
        for m in members:  # every input image the request brought, wherever it is in the params
            # in RGB, but a mask in its own mode: an RGBA mask is read from its alpha (service/masks.py)
            m.pixels = {path: self._input(m, entry["name"], keep_mode=path == "mask")
                        for path, entry in inputs.entries(m.params)}
        # 1. adapters: the batch's LoRAs active (loaded first when not resident), or none
        used = batch.pipeline.use_adapters(members[0].params, progress_)
        if used:
            for m in members:
                m.params, m.params_changed = {**m.params, "loras": used}, True
        # 2. inference: one pipeline call for the whole batch
        t0 = time.perf_counter()
        with torch.inference_mode(batch.pipeline.inference):  # a training pipeline runs with gradients
            outputs = batch.pipeline.run_batch([m.run_params() for m in members], progress_)
        inference_s = time.perf_counter() - t0
        metrics.BUSY_SECONDS.inc(inference_s)
        for m, output in zip(members, outputs):
            m.output, m.pixels = output, {}
            m.timings["inference_s"] = round(inference_s, 4)
        if len(members) > 1:
            log.info("batch of %d %s jobs done in %.3fs", len(members), task, inference_s)
        return inference_s

    def _finish(self, batch: Batch, progress_: Progress, inference_s: float) -> None:
        """Encode and store each running job's outputs; each job ends as soon as its files are stored."""
        task = batch.task
        # 3. encode (canceled mid-batch: their outputs are dropped)
        progress_.post(Stage.ENCODE)
        live = batch.active
        # One thread while the next job's inference runs beside this stage (it keeps the cores); all when idle.
        encoded = self.encoder.encode_all([(m.output, m.params, self._recipe(batch, m)) for m in live],
                                          threads=1 if self.running else None)
        # 4. store, and each job ends as soon as its files are stored
        progress_.post(Stage.STORE)
        for m, (files, result, encode_s) in zip(live, encoded):
            if m.ended:
                continue
            registered = None
            try:
                faults.before_store(faults.requested(m.params, self.settings.fault_injection))
                store_s = results.store(self.storage, m.id, files)
                if m.output.adapter is not None:  # a training job's adapter: stored, then registered for its key
                    registered = trained.register(self.redis, self.storage, self.settings, m.id, m.output.adapter)
                    result["adapter"] = registered.shown
            except OSError as exc:  # a full disk, a lost mount: the write left nothing behind
                message = f"storing the result failed: {exc.strerror or type(exc).__name__}"
                self._end(batch, m, JobStatus.FAILED, progress_.state(), error=job_error(ErrorCode.INTERNAL, message))
                continue
            except JobFailed as exc:  # the adapter could not be registered (its name taken meanwhile, ...)
                self._end(batch, m, JobStatus.FAILED, progress_.state(), error=job_error(exc.code, exc.message))
                continue
            for phase, seconds in (("inference", inference_s), ("encode", encode_s), ("store", store_s)):
                metrics.JOB_PHASE_SECONDS.labels(task, phase).observe(seconds)
            m.timings = {"inference_s": m.timings["inference_s"], "encode_s": round(encode_s, 4),
                         "store_s": round(store_s, 4), "queue_s": round(m.started - m.created, 4),
                         "total_s": round(protocol.now() - m.created, 4)}
            self._end(batch, m, JobStatus.SUCCEEDED, progress_.finished(), result=result, timings=m.timings,
                      warnings=m.output.warnings)
            if registered is not None and m.status != JobStatus.SUCCEEDED:
                registered.undo(self.redis, self.storage)  # it ended otherwise meanwhile: nothing stays registered
            log.info("job %s (%s) %s in %.3fs", m.id, task, m.status, m.timings["total_s"])

    def _recipe(self, batch: Batch, member: Member):
        """What the job's files carry: its recipe, or None with FRESCO_OUTPUT_METADATA off (or for a training
        job's validation images: no recipe remakes them)."""
        if self.recipes is None or TASKS[batch.task].output == "adapter":
            return None
        return self.recipes.for_job(batch.task, batch.model, member.params)

    def _input(self, member: Member, name: str, keep_mode: bool = False) -> Image.Image:
        """One of the job's input images, from storage: in RGB, or decoded in its own mode (`keep_mode`)."""
        image = Image.open(io.BytesIO(self.storage.get(member.id, name)))
        if keep_mode:
            image.load()
            return image
        return image.convert("RGB")

    def report(self, batch: Batch, state: dict, progress_: Progress) -> bool:
        """The progress callback: report `state` to every running job of the batch, in one round trip,
        with a live preview for each job someone watches, when one is due. Jobs whose cancel flag is set
        end `canceled` here, at once. True (stop the pipeline) when none is left."""
        active = batch.active
        previews = self._previews(batch, progress_)
        try:
            every = self.settings.webhook_progress_interval_s
            replies = protocol.run_all(self.redis, [
                protocol.report(m.id, state, preview=previews.get(m.id), webhook_every_s=every) for m in active])
        except REDIS_DOWN:
            # Redis away for a moment: this step's progress is lost, the job goes on.
            log.warning("progress of %s not recorded: Redis unreachable", [m.id for m in active])
            return False
        for m, reply in zip(active, replies):
            m.watched = reply.watched
        canceled = [m for m, reply in zip(active, replies) if reply.stop]
        if len(canceled) == len(active):
            return True  # the pipeline stops; the caller ends them
        for m in canceled:
            self._cancel(batch, m, state, still_running=True)
        return False

    def _previews(self, batch: Batch, progress_: Progress) -> dict[str, str]:
        """The live previews due at this step: for each running job someone watches, its first image's
        (or video's middle frame's) latents rendered, at the first step it is watched and then every
        `preview_every_steps` steps (workers/previews.py)."""
        if progress_.image is not None:
            return self._image_previews(batch, progress_)
        latents, pipe = progress_.latents, progress_.pipe
        model = batch.pipeline.model if batch.pipeline is not None else None
        previewer = model.previewer if model is not None else None
        if latents is None or previewer is None or not self.settings.previews:
            return {}
        every, step = self.settings.preview_every_steps, progress_.denoised
        out, offset = {}, 0
        for m in batch.members:  # the latents hold every image of the batch, in member order
            first, offset = offset, offset + int(m.params.get("num_images", 1))
            if m.ended or not m.watched or first >= latents.shape[0]:
                continue
            if m.previewed_at is not None and step - m.previewed_at < every:
                continue
            m.previewed_at = step  # a failed one too: the next try keeps the cadence
            try:
                size = (m.params["width"], m.params["height"]) if "height" in m.params else None  # FLUX unpacks to it
                out[m.id] = previewer.render(latents[first], pipe.scheduler, size)
            except Exception:  # a preview is a nicety: never a reason for the job to fail
                log.exception("live preview of job %s failed; the job goes on", m.id)
        return out

    def _image_previews(self, batch: Batch, progress_: Progress) -> dict[str, str]:
        """A training job's live preview: its latest validation image, sent when it is new and then every
        `preview_every_steps` steps while someone watches (a preview is kept a short while only)."""
        image, step = progress_.image, progress_.step
        out = {}
        for m in batch.active:
            if not m.watched or not self.settings.previews:
                continue
            if m.previewed_image is image and m.previewed_at is not None and \
                    step - m.previewed_at < self.settings.preview_every_steps:
                continue
            m.previewed_image, m.previewed_at = image, step
            out[m.id] = previews.to_data_url(previews.fit(image))
        return out

    # ---- 3. end ----

    def _end(self, batch: Batch, member: Member, status: JobStatus, final: dict, **fields) -> None:
        """End one job (once): its final transition, and for a job this worker took off the queue
        itself, the RQ job hash RQ would have deleted."""
        if member.ended:
            return
        member.ended, member.status = True, status
        if member.params_changed:
            fields["params"] = member.params
        if TASKS[batch.task].output == "adapter":  # however a training job ends, its checkpoint goes
            trained.forget_checkpoint(self.storage, member.id)
        call = protocol.end(member.id, batch.task, status, ttl=self.settings.job_ttl_s, progress=final, **fields)

        def write():
            if not member.claimed:
                return call.run(self.redis)
            with self.redis.pipeline(transaction=False) as pipe:
                call.queue(pipe)
                protocol.forget_rq_job(pipe, member.id)
                pipe.execute()

        until_redis_answers(write, f"ending job {member.id}")
        outcome = status if status != JobStatus.FAILED else f"failed_{fields['error']['code']}"
        metrics.JOBS_FINISHED.labels(batch.task, outcome).inc()

    def _cancel(self, batch: Batch, member: Member, state: dict, still_running: bool = False) -> None:
        self._end(batch, member, JobStatus.CANCELED, state, error=job_error(ErrorCode.CANCELED, CANCELED_BY_REQUEST))
        log.info("job %s (%s) canceled at %s step %s%s", member.id, batch.task, state["stage"], state["step"],
                 "; its batch goes on" if still_running else "")

    def _fail(self, batch: Batch, state: dict, failure: Failure) -> None:
        if failure.code == ErrorCode.GPU_OOM:
            metrics.GPU_OOMS.labels(batch.task).inc()
        for m in batch.members:
            self._end(batch, m, JobStatus.FAILED, state, error=job_error(failure.code, failure.message))
        if failure.restart:
            self._exit_for_restart()

    def _exit_for_restart(self) -> None:
        """A sticky CUDA error poisons this process's context: leave, so the supervisor starts anew
        (the jobs on the finishing stage end first, if they can within a minute)."""
        log.critical("sticky GPU error: worker %s exits for a restart", self.name)
        self.finisher.drain(EXIT_DRAIN_S)
        try:
            heartbeats.forget(self.redis, self.name)
        finally:
            logging.shutdown()
            os._exit(RESTART_EXIT_CODE)
