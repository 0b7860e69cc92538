"""What every task pipeline shares: the interface, seeded generators, prompt-length warnings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from workers.models import LoadedModel
from workers.progress import Progress


@dataclass
class Output:
    images: list[Any] = field(default_factory=list)  # PIL images, one per seed
    frames: Any = None  # video: uint8 array (frames, height, width, 3)
    warnings: list[str] = field(default_factory=list)


class TaskPipeline:
    """`plan(params)` names the denoising stages and their steps; `run(params, image, progress)`
    runs them. Heavy objects are built once in `__init__`, at worker start."""

    task: str = ""

    def __init__(self, model: LoadedModel):
        self.model = model

    def plan(self, params: dict) -> list[tuple[str, int]]:
        raise NotImplementedError

    def run(self, params: dict, image, progress: Progress) -> Output:
        raise NotImplementedError


def generators(seed: int, count: int) -> list[torch.Generator]:
    """One CPU generator per output image, seeded seed, seed+1, ...: a seed reproduces its image
    alone or in a batch, on any device."""
    return [torch.Generator("cpu").manual_seed((seed + i) % 2**32) for i in range(count)]


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
