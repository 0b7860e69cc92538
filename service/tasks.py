"""The task table: every task Fresco serves, in one place, read by everything that differs per task.

A row names the task and where its three parts are: its request schema (API side), its rule function
(the checks that need the catalogue and settings: `service/api/rules.py`) and its pipeline (worker
side, `workers/pipelines/<task>.py`), as `module:attribute` paths, so neither side imports the other.
It also says what the task produces, the diffusers mode its pipeline runs in (the family files map a
mode to a pipeline class), the order a worker serving several tasks drains their queues in, its
default timeout and queue cap, and what `GET /models` shows about it. Which model kinds serve a task
is the family table's (`service/families.py`). Adding a task is a row here and those three parts
(tests/service/test_tasks.py checks each row's). Plain data: the API, the workers and the reaper all
import it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Task:
    name: str
    request: str  # its request schema: "module:Class" (a pydantic model whose `task` Literal is the name)
    rules: str  # its rule function: "module:function" taking a service.api.rules.Rules
    pipeline: str  # its pipeline class: "module:Class" (a workers.pipelines.base.TaskPipeline)
    mode: str  # what its pipeline does, in diffusers' terms: "txt2img", "img2img", "inpaint", "img2vid" (family
    # files); "upscale": no diffusers pipeline (an upscaler's), "train": a training job's copy
    priority: int  # a worker serving several tasks takes the lowest first (short jobs before long ones)
    timeout_s: int  # default of FRESCO_JOB_TIMEOUT_S for the task
    queue_cap: int  # default of FRESCO_QUEUE_CAP for the task
    output: str = "images"  # "images", "video", or "adapter" (a training job: its images are validation ones)
    route: str = "/generate"  # the route its requests come through (the union of POST /generate's tasks)
    # its pipeline runs on the worker's resident diffusers models; False: it is built from the model's spec and
    # the settings and loads what it needs itself (a training job's copy per job; an upscaler once)
    resident: bool = True
    schedulers: bool = False  # the request may name a scheduler (GET /models lists them)
    adapters: bool = False  # the request may name LoRAs (`loras`); embeddings work in its prompt
    control: bool = False  # the request may bring ControlNets (`control`)
    model_facts: tuple[str, ...] = ()  # per-model facts `GET /models` shows (ModelSpec.facts())


def _parts(name: str, schema: str, pipeline: str) -> dict[str, str]:
    """A task's three parts where they conventionally live."""
    return {"request": f"service.api.schemas:{schema}", "rules": f"service.api.rules:{name}",
            "pipeline": f"workers.pipelines.{name}:{pipeline}"}


# In the order the contract lists them (and `GET /models`, the CLI and error messages show them).
TASKS: dict[str, Task] = {t.name: t for t in (
    Task("sdxl", **_parts("sdxl", "SDXLRequest", "SDXL"), mode="txt2img", priority=5, timeout_s=600,
         queue_cap=1000, schedulers=True, adapters=True, control=True, model_facts=("refiner",)),
    Task("turbo", **_parts("turbo", "TurboRequest", "Turbo"), mode="txt2img", priority=0, timeout_s=60,
         queue_cap=5000, adapters=True),
    # img2img runs on an SD, SDXL base or Turbo model's weights (from_pipe: no second copy).
    Task("img2img", **_parts("img2img", "Img2ImgRequest", "Img2Img"), mode="img2img", priority=2, timeout_s=600,
         queue_cap=1000, schedulers=True, adapters=True, control=True, model_facts=("family", "defaults")),
    Task("svd", **_parts("svd", "SVDRequest", "SVD"), mode="img2vid", priority=6, timeout_s=1800, queue_cap=200,
         output="video", model_facts=("max_num_frames",)),
    # Any SD 1.x/2.x or SDXL checkpoint (an SDXL model runs without its refiner); defaults per model.
    Task("txt2img", **_parts("txt2img", "Txt2ImgRequest", "Txt2Img"), mode="txt2img", priority=4, timeout_s=600,
         queue_cap=1000, schedulers=True, adapters=True, control=True, model_facts=("family", "defaults")),
    # Inpainting and outpainting on an SD or SDXL model's weights (from_pipe), or on a dedicated inpainting
    # checkpoint (a 9-channel UNet: the task's default where there is one).
    Task("inpaint", **_parts("inpaint", "InpaintRequest", "Inpaint"), mode="inpaint", priority=3, timeout_s=600,
         queue_cap=1000, schedulers=True, adapters=True, control=True,
         model_facts=("family", "defaults", "inpainting")),
    # Upscaling with an upscaler (the models file's `upscalers:`, loaded through spandrel, or `lanczos`):
    # no diffusion, tile by tile; its pipeline loads the upscaler itself (no diffusers model), once.
    Task("upscale", **_parts("upscale", "UpscaleRequest", "Upscale"), mode="upscale", priority=1, timeout_s=300,
         queue_cap=1000, resident=False, model_facts=("scale",)),
    # Training a LoRA or an embedding on an SD or SDXL model (POST /train): a long job, last in line; it
    # loads its own trainable copy of the model per job and may resume from a checkpoint (2 retries).
    Task("train", **_parts("train", "TrainRequest", "Train"), mode="train", priority=9, timeout_s=6 * 3600,
         queue_cap=100, output="adapter", route="/train", resident=False, model_facts=("family", "defaults")),
)}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
GENERATE_TASKS: tuple[str, ...] = tuple(name for name, task in TASKS.items() if task.route == "/generate")


def load(path: str) -> Any:
    """The object a row's `module:attribute` path names (imported on first use)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def by_priority(names) -> list[str]:
    """`names` in the order a worker drains their queues."""
    return sorted(names, key=lambda name: TASKS[name].priority)
