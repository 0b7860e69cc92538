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


def prompt_args(model: LoadedModel, items: list[dict]) -> dict:
    """The text arguments of a batch's pipeline call: one job's prompt once with `num_images` images of it,
    or a prompt (and negative prompt) per image; no negative prompt where the model runs without guidance
    (Turbo, FLUX.1 schnell) or its family takes none (FLUX.1); and the job parameters its family's
    pipelines take as they are (T5's `max_sequence_length`)."""
    p = items[0]
    negative = model.spec.guidance and model.family.no_negative_prompt is None
    if len(items) == 1:
        out = dict(prompt=p["prompt"], negative_prompt=(p.get("negative_prompt") or None) if negative else None,
                   num_images_per_prompt=p["num_images"])
    else:
        out = dict(prompt=per_image(items, lambda q: q["prompt"]),
                   negative_prompt=negatives(items) if negative else None, num_images_per_prompt=1)
    return {**out, **{name: p[name] for name in model.family.call_params if p.get(name) is not None}}


def img2img_size(model: LoadedModel, width: int, height: int) -> dict:
    """The output size an img2img pipeline of the model's family is given, where it takes one."""
    return {"width": width, "height": height} if model.family.img2img_size else {}


def call_key(model: LoadedModel, p: dict) -> tuple:
    """The job parameters its family's pipelines take as they are, for batch keys: one call has one of each."""
    return tuple(p.get(name) for name in model.family.call_params)


def warmup_text(model: LoadedModel) -> dict:
    """A warm-up job's guidance, scheduler and family parameters: the model's defaults (the shapes they give,
    T5's token count included, are the ones requests get)."""
    defaults = model.spec.defaults()
    return {"guidance_scale": defaults["guidance_scale"], "scheduler": model.spec.kind_row.scheduler,
            **{name: defaults[name] for name in model.family.call_params if name in defaults}}


def text_warnings(model: LoadedModel, pipe, params: dict) -> list[str]:
    """A job's warnings about its text: prompts longer than a text encoder reads (`prompt_warnings`), and a
    negative prompt its model's family ignores."""
    out = prompt_warnings(pipe, model.family, params, prompt=params["prompt"],
                          negative_prompt=params.get("negative_prompt"))
    if params.get("negative_prompt") and model.family.no_negative_prompt:
        out.append(model.family.no_negative_prompt)
    return out


def _family_of_pipe(pipe):
    from workers.families import FAMILIES

    return next((f for f in FAMILIES.values() if type(pipe).__name__ in f.class_names()), None)


def prompt_warnings(pipe, family=None, params: dict | None = None, **prompts: str | None) -> list[str]:
    """A warning for each prompt longer than a text encoder's window (it is truncated, not refused), counted
    in that encoder's own tokens: CLIP's 77, T5's the job's `max_sequence_length` (the family's
    `length_param`; default: the family of the pipeline's class). Encoders of one window share a warning;
    one that is not loaded (SD 3 without T5) has none."""
    family = family or _family_of_pipe(pipe)
    encoders = family.text_encoders if family else ()
    windows: dict[tuple[str, int], object] = {}  # (label, tokens) -> the tokenizer that counts them
    for encoder in encoders:
        tokenizer = getattr(pipe, encoder.tokenizer, None)
        if tokenizer is None or getattr(pipe, encoder.encoder, None) is None:
            continue
        limit = (params or {}).get(encoder.length_param) if encoder.length_param else None
        windows.setdefault((encoder.label, limit or tokenizer.model_max_length), tokenizer)
    if not windows:  # a pipeline of no family's (or a refiner: its one tokenizer)
        tokenizer = getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)
        if tokenizer is None:
            return []
        windows[("CLIP", tokenizer.model_max_length)] = tokenizer
    one_window = len({limit for _, limit in windows}) == 1
    out = []
    for name, text in prompts.items():
        if not text:
            continue
        for (label, limit), tokenizer in windows.items():
            if len(tokenizer(text, truncation=False).input_ids) > limit:
                if one_window:
                    out.append(f"{name} is longer than the text encoder's {limit} tokens; the rest was truncated")
                    break
                out.append(f"{name} is longer than the {label} text encoder's {limit} tokens; the rest was "
                           f"truncated for it")
    return out
