"""The task table: every task Fresco serves, in one place, read by everything that differs per task.

A row names the task, the model kinds that serve it, whether it takes an input image, what it
produces, the order a worker serving several tasks drains their queues in, its default timeout and
queue cap, and what `GET /models` shows about it. Adding a task is a row here, a request schema in
`service/api/schemas.py` and a pipeline file in `workers/pipelines/` (tests/service/test_tasks.py
checks that every row has both). Plain data: the API, the workers and the reaper all import it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    kinds: tuple[str, ...]  # model kinds (catalog `kind`) that can serve the task
    priority: int  # a worker serving several tasks takes the lowest first (short jobs before long ones)
    timeout_s: int  # default of FRESCO_JOB_TIMEOUT_S for the task
    queue_cap: int  # default of FRESCO_QUEUE_CAP for the task
    output: str = "images"  # "images" or "video"
    takes_image: bool = False  # the request carries an input image
    schedulers: bool = False  # the request may name a scheduler (GET /models lists them)
    adapters: bool = False  # the request may name LoRAs (`loras`); embeddings work in its prompt
    control: bool = False  # the request may bring ControlNets (`control`)
    model_facts: tuple[str, ...] = ()  # per-model facts `GET /models` shows (ModelSpec.facts())


# In the order the contract lists them (and `GET /models`, the CLI and error messages show them).
TASKS: dict[str, Task] = {t.name: t for t in (
    Task("sdxl", kinds=("sdxl",), priority=3, timeout_s=600, queue_cap=1000, schedulers=True, adapters=True,
         control=True, model_facts=("refiner",)),
    Task("turbo", kinds=("turbo",), priority=0, timeout_s=60, queue_cap=5000, adapters=True),
    # img2img runs on an SD, SDXL base or Turbo model's weights (from_pipe: no second copy).
    Task("img2img", kinds=("sdxl", "turbo", "sd"), priority=1, timeout_s=600, queue_cap=1000, takes_image=True,
         schedulers=True, adapters=True, control=True, model_facts=("family", "defaults")),
    Task("svd", kinds=("svd",), priority=4, timeout_s=1800, queue_cap=200, output="video", takes_image=True,
         model_facts=("max_num_frames",)),
    # Any SD 1.x/2.x or SDXL checkpoint (an SDXL model runs without its refiner); defaults per model.
    Task("txt2img", kinds=("sd", "sdxl"), priority=2, timeout_s=600, queue_cap=1000, schedulers=True,
         adapters=True, control=True, model_facts=("family", "defaults")),
)}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def tasks_for_kind(kind: str) -> list[str]:
    """The tasks a model of `kind` serves, in table order."""
    return [t.name for t in TASKS.values() if kind in t.kinds]


def by_priority(names) -> list[str]:
    """`names` in the order a worker drains their queues."""
    return sorted(names, key=lambda name: TASKS[name].priority)
