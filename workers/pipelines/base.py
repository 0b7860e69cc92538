"""What every task pipeline shares: the interface, seeded generators, prompt-length warnings, batching.

A pipeline gets each job's `params` as resolved by the API, its input images (wherever the request had
them: `image`, `control[0].image`) decoded by the worker under the entry's `pixels`
(service/jobs/inputs.py): `params["image"]["pixels"]` is a PIL image.

Dynamic batching: jobs whose `batch_key` is equal (and not None) can run in one pipeline call through
`run_batch`. Each job keeps its own generators (seed, seed+1, ... per image), so its images are the
ones it gets alone, up to float rounding: batched kernels may round differently (about 1e-6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

import torch

from service.jobs.states import Stage
from workers.models import LoadedModel
from workers.progress import Progress


@dataclass
class Output:
    images: Sequence[Any] = field(default_factory=list)  # PIL images, one per seed (pipelines: HostImages)
    frames: Any = None  # video: uint8 array (frames, height, width, 3)
    warnings: list[str] = field(default_factory=list)
    adapter: dict | None = None  # a training job's product: {"record", "files" by digest, "replace"}


class TaskPipeline:
    """`plan(params)` names the denoising stages and their steps; `run(params, progress)` runs them.
    Heavy objects are built once in `__init__`, at worker start.

    Batching: `batch_key(params)` is None for a job that always runs alone, else a key; jobs with
    equal keys may run together in `run_batch([params, ...], progress)`, which returns one Output per
    job, in order.

    Warm-up (workers/runtime.py): `warmup_params(width, height)` is a real job's parameters at that
    size, with few steps (the shapes, not the step count, decide what gets compiled), input images
    included (`input_image`); `default_size()` the size warmed when the models file names no buckets."""

    task: str = ""
    inference: bool = True  # runs under torch.inference_mode (a training pipeline: False)

    def __init__(self, model: LoadedModel | None):
        self.model = model

    def plan(self, params: dict) -> list[tuple[Stage, int]]:
        raise NotImplementedError

    def default_size(self) -> tuple[int, int]:
        raise NotImplementedError

    def warmup_params(self, width: int, height: int) -> dict:
        raise NotImplementedError

    def run(self, params: dict, progress: Progress) -> Output:
        raise NotImplementedError

    def batch_key(self, params: dict) -> Hashable | None:
        return None

    def use_adapters(self, params: dict, progress: Progress | None = None) -> list[dict]:
        """Make the job's LoRAs (`params["loras"]`, none: LoRA off) active in the model, loading those not
        resident; the entries with their content digests. Every job of a batch has the same (workers/batching.py)."""
        if self.model is None or self.model.loras is None:
            return []
        self.model.loras.use_embeddings(params.get("embeddings") or [])
        return self.model.loras.use(params.get("loras") or [], progress)

    def run_batch(self, items: list[dict], progress: Progress) -> list[Output]:
        if len(items) != 1:
            raise NotImplementedError(f"{self.task} runs one job at a time")
        return [self.run(items[0], progress)]


WARMUP_COMMON = {"prompt": "warm-up", "negative_prompt": "", "seed": 0, "num_images": 1, "output_format": "png"}


def input_image(image, name: str = "input.png") -> dict:
    """An input-image entry carrying `image` (PIL) as its `pixels`, as the worker hands jobs' inputs to
    pipelines: for warm-ups, benches and tests."""
    return {"name": name, "width": image.width, "height": image.height, "pixels": image}


def pixels(entry: dict):
    """The decoded image of an input-image entry (params["image"], a control entry's "image")."""
    return entry["pixels"]


def generators(seed: int, count: int) -> list[torch.Generator]:
    """One CPU generator per output image, seeded seed, seed+1, ...: a seed reproduces its image
    alone or in a batch, on any device."""
    return [torch.Generator("cpu").manual_seed((seed + i) % 2**32) for i in range(count)]


def batch_generators(items: list[dict]) -> list[torch.Generator]:
    """Every job's own generators, in job order: image i of job j gets seed_j + i, as it would alone."""
    return [g for params in items for g in generators(params["seed"], params["num_images"])]


def per_image(items: list[dict], value) -> list:
    """`value(params)` repeated once per output image of each job, in job order: one prompt (or negative
    prompt, or input image) per image, so jobs with different `num_images` batch."""
    return [value(params) for params in items for _ in range(params["num_images"])]


def split(images: list, items: list[dict]) -> list[list]:
    """The pipeline's flat list of images, back into one list per job."""
    out, start = [], 0
    for params in items:
        out.append(images[start:start + params["num_images"]])
        start += params["num_images"]
    return out


def negatives(items: list[dict]) -> list[str] | None:
    """Per-image negative prompts, or None when no job has one. An empty negative prompt alone means
    zeros (force_zeros_for_empty_prompt), not the embedding of "": jobs batch only when all have one
    or none has one (see the batch keys), so a batch gives every job what it gets alone."""
    if not any(params.get("negative_prompt") for params in items):
        return None
    return per_image(items, lambda params: params.get("negative_prompt") or "")


def prompt_warnings(pipe, **prompts: str | None) -> list[str]:
    """A warning for each prompt longer than the text encoder's window (it is truncated, not refused)."""
    tokenizer = getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)
    if tokenizer is None:
        return []
    limit = tokenizer.model_max_length
    out = []
    for name, text in prompts.items():
        if text and len(tokenizer(text, truncation=False).input_ids) > limit:
            out.append(f"{name} is longer than the text encoder's {limit} tokens; the rest was truncated")
    return out
