"""The job's vocabulary: statuses, progress stages, error codes and event types, and the progress and
event values built from them. The contract's JobView uses these strings (`service/api/schemas.py`
takes its `Literal`s from here); the Lua scripts receive them as arguments, never spell them.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


class Stage(StrEnum):
    """What `progress.stage` says: queued, adapters (while the job's LoRAs are fetched and loaded, when
    they are not resident yet), the denoising stages of the task's pipeline (base and refiner for SDXL,
    denoise for the others; hires for a second pass at the larger size; upscale for an upscaler's
    tiles), then decode, encode, store, and done. A training job: preparing (its
    dataset's latents and captions), training (its optimizer steps), saving (the adapter), then done."""

    QUEUED = "queued"
    ADAPTERS = "adapters"
    BASE = "base"
    REFINER = "refiner"
    DENOISE = "denoise"
    HIRES = "hires"  # a txt2img or sdxl job's second pass at the larger size (`hires`)
    UPSCALE = "upscale"  # an upscale job's tiles (or a hires pass's upscaler)
    DECODE = "decode"
    ENCODE = "encode"
    STORE = "store"
    PREPARING = "preparing"
    TRAINING = "training"
    SAVING = "saving"
    DONE = "done"


POST_STAGES = (Stage.DECODE, Stage.ENCODE, Stage.STORE)  # after the denoising stages, in order


class ErrorCode(StrEnum):
    GPU_OOM = "gpu_oom"
    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"
    INVALID_INPUT = "invalid_input"
    CANCELED = "canceled"
    INTERNAL = "internal"


class EventType(StrEnum):
    """Events published on a job's channel (service/jobs/keys.py `events`)."""

    PROGRESS = "progress"  # {"type", "status", "progress"}
    DONE = "done"  # {"type", "status"}: the job is terminal; read it for the rest


class WebhookEvent(StrEnum):
    """What a job's webhook may be told (a request's `webhook_events_filter`); the delivery's `type` is
    `job.<event>`. `completed` covers every end: succeeded, failed, canceled."""

    START = "start"  # queued -> running (again, with its own delivery, after a requeue)
    PROGRESS = "progress"  # a running job's progress, at most one delivery per job per interval
    COMPLETED = "completed"


def progress(stage: Stage, step: int = 0, total_steps: int = 0, fraction: float = 0.0, **extra) -> dict:
    """`extra`: a training job's `loss` (of its last step) and `resumed_from` (the checkpoint's step)."""
    return {"stage": stage, "step": step, "total_steps": total_steps, "fraction": fraction, **extra}


def queued_progress() -> dict:
    return progress(Stage.QUEUED)


def ended_progress() -> dict:
    """The progress of a job that ended before it ran to the end (canceled while queued, lost)."""
    return progress(Stage.DONE, fraction=1.0)


def progress_event(status: JobStatus, state: dict) -> dict:
    return {"type": EventType.PROGRESS, "status": status, "progress": state}


def done_event(status: JobStatus) -> dict:
    return {"type": EventType.DONE, "status": status}


def job_error(code: ErrorCode, message: str) -> dict:
    return {"code": code, "message": message}


CANCELED_BY_REQUEST = "canceled by request"
