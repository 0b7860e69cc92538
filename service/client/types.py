"""Typed, read-only views of what the API answers: a `Job` (the contract's JobView) and the events of a
job's Server-Sent Events stream. Each keeps the JSON it was read from in `raw`, so a field the server adds
later is never out of reach."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union
from urllib.parse import urlsplit

from service.client.errors import JobCanceled, JobFailed

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED})


@dataclass(frozen=True)
class Progress:
    """Where a job is: `stage` (queued, adapters, base, refiner, denoise, decode, encode, store, done; a
    training job: preparing, training, saving, done), the denoising (or training) `step` of `total_steps`
    (0 outside those), and `fraction` of the whole job, 0 to 1. A training job also reports the `loss` of
    its last step and, when it resumed from a checkpoint after losing its worker, the step `resumed_from`
    (both None otherwise)."""

    stage: str = QUEUED
    step: int = 0
    total_steps: int = 0
    fraction: float = 0.0
    loss: float | None = None
    resumed_from: int | None = None

    @classmethod
    def from_dict(cls, data: dict | None) -> Progress:
        data = data or {}
        loss, resumed = data.get("loss"), data.get("resumed_from")
        return cls(stage=str(data.get("stage", QUEUED)), step=int(data.get("step") or 0),
                   total_steps=int(data.get("total_steps") or 0), fraction=float(data.get("fraction") or 0.0),
                   loss=float(loss) if loss is not None else None,
                   resumed_from=int(resumed) if resumed is not None else None)


@dataclass(frozen=True)
class Output:
    """One result file: an image, or the video of an `svd` job (then `num_frames` and `fps` are set).
    `url` is absolute and, with API keys on, signed: it works without a header until it expires."""

    url: str
    content_type: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    num_frames: int | None = None
    fps: float | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        """The file's name on the server (`0.png`, `video.mp4`), without the signature's query."""
        return urlsplit(self.url).path.rsplit("/", 1)[-1]

    @classmethod
    def from_dict(cls, data: dict) -> Output:
        return cls(url=data["url"], content_type=data.get("content_type"), width=data.get("width"),
                   height=data.get("height"), seed=data.get("seed"), num_frames=data.get("num_frames"),
                   fps=data.get("fps"), raw=data)


@dataclass(frozen=True)
class Adapter:
    """A trained LoRA or embedding: the `result.adapter` of a succeeded training job, or an entry of
    `GET /adapters`. `kind` is "lora" or "embedding"; a LoRA has a `trigger` (words to put in prompts), an
    embedding a `token` (the new word itself). `digest` is the file's sha256, `url` the `.safetensors`
    file's (signed, with API keys on). `created_at`, `job_id` and `owner` ("you") come with the listing."""

    name: str
    kind: str
    model: str
    family: str | None = None
    trigger: str | None = None
    token: str | None = None
    digest: str | None = None
    size_bytes: int | None = None
    url: str | None = None
    created_at: float | None = None  # when it was registered, in seconds since the epoch
    job_id: str | None = None
    owner: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict) -> Adapter:
        size = data.get("size_bytes")
        return cls(name=data["name"], kind=str(data.get("kind") or "lora"), model=str(data.get("model") or ""),
                   family=data.get("family"), trigger=data.get("trigger"), token=data.get("token"),
                   digest=data.get("digest"), size_bytes=int(size) if size is not None else None,
                   url=data.get("url"), created_at=data.get("created_at"), job_id=data.get("job_id"),
                   owner=data.get("owner"), raw=data)


class AdapterList(list):
    """`GET /adapters`: the API key's adapters by name (a plain list of `Adapter`), and `limit`, how many
    the key may keep (FRESCO_MAX_ADAPTERS_PER_KEY; None when the server did not say)."""

    def __init__(self, adapters=(), limit: int | None = None):
        super().__init__(adapters)
        self.limit = limit

    @classmethod
    def from_dict(cls, data: dict) -> AdapterList:
        limit = data.get("limit")
        return cls([Adapter.from_dict(item) for item in data.get("adapters") or []],
                   int(limit) if limit is not None else None)

    def __repr__(self) -> str:
        return f"AdapterList({list.__repr__(self)}, limit={self.limit!r})"


@dataclass(frozen=True)
class ErrorInfo:
    """Why a job failed or was canceled: `code` (gpu_oom, timeout, worker_lost, invalid_input, canceled,
    internal) and a readable `message`."""

    code: str
    message: str


@dataclass(frozen=True)
class Job:
    """A job as the API last reported it. It does not update itself: `client.get(job.id)` reads it again."""

    id: str
    task: str
    model: str
    status: str
    progress: Progress
    params: dict
    warnings: list[str]
    images: list[Output]
    video: Output | None
    error: ErrorInfo | None
    timings: dict
    queue_position: int | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    adapter: Adapter | None = None  # a succeeded training job's adapter (its `images` are validation images)
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict) -> Job:
        result = data.get("result") or {}
        error = data.get("error")
        return cls(
            id=data["id"], task=data["task"], model=data["model"], status=data["status"],
            progress=Progress.from_dict(data.get("progress")), params=data.get("params") or {},
            warnings=list(data.get("warnings") or []),
            images=[Output.from_dict(item) for item in result.get("images") or []],
            video=Output.from_dict(result["video"]) if result.get("video") else None,
            error=ErrorInfo(str(error.get("code")), str(error.get("message") or "")) if error else None,
            timings=data.get("timings") or {}, queue_position=data.get("queue_position"),
            created_at=data.get("created_at"), started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            adapter=Adapter.from_dict(result["adapter"]) if result.get("adapter") else None, raw=data)

    @property
    def seed(self) -> int | None:
        """The seed the job ran with (drawn by the server when the request gave none)."""
        return self.params.get("seed")

    @property
    def done(self) -> bool:
        """The job has ended: succeeded, failed or canceled. Its state no longer changes."""
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCEEDED

    @property
    def outputs(self) -> list[Output]:
        """Every result file: the images, or the one video."""
        return list(self.images) + ([self.video] if self.video else [])

    def raise_for_status(self) -> Job:
        """Raise `JobFailed` or `JobCanceled` when the job ended without results; else return the job
        (a job still queued or running raises nothing: it has not failed)."""
        if self.status == FAILED:
            raise JobFailed(self)
        if self.status == CANCELED:
            raise JobCanceled(self)
        return self


@dataclass(frozen=True)
class ProgressEvent:
    """A `progress` event: the job's status and progress changed. `preview` is a small
    `data:image/webp;base64,...` image of the current latents when the stream was opened with previews."""

    status: str
    progress: Progress
    preview: str | None = None


@dataclass(frozen=True)
class DoneEvent:
    """The last event of a stream: the job ended; `job` is its terminal state, results included."""

    job: Job

    @property
    def status(self) -> str:
        return self.job.status

    @property
    def progress(self) -> Progress:
        return self.job.progress


Event = Union[ProgressEvent, DoneEvent]


def event_from_sse(name: str, data: Any) -> Event | None:
    """A stream message as a typed event; None for anything else (the server's `error` message, which it
    sends before ending a stream it cannot continue, is handled as a dropped stream)."""
    if name == "progress" and isinstance(data, dict):
        progress = data.get("progress") or {}
        return ProgressEvent(status=str(data.get("status", QUEUED)), progress=Progress.from_dict(progress),
                             preview=data.get("preview") or progress.get("preview"))
    if name == "done" and isinstance(data, dict):
        return DoneEvent(Job.from_dict(data))
    return None
