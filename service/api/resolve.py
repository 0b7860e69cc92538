"""From a validated request to the job's full parameters: the rules that need the catalogue and settings.

Common to every task: the model (the task's default when absent), the seed (drawn when absent), every
input image the request carries, wherever it is (`image`, `control[0].image`: the `ImageRef` type
says which fields are images), fetched, checked and decoded, and the pixel limit. Then the task's own
rule function (its row in the task table names it, service/api/rules.py), and the shared rules its
row asks for (LoRAs, ControlNets), and the webhook. Every resolved parameter, the seed included, is
reported back in the JobView's `params`; each input image there becomes the entry of the file it is
stored as (service/jobs/inputs.py).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Callable

from service import lora_urls
from service.api import rules as shared
from service.api.errors import ValidationFailed, field_error
from service.api.inputs import DecodedImage, ImageRejected, read_image
from service.api.rules import Rules
from service.api.schemas import image_values
from service.catalog import Catalog
from service.jobs import inputs
from service.settings import Settings
from service.storage.names import input_name
from service.tasks import TASKS, load

# Task name -> its rule function (the row's `rules`).
RULES: dict[str, Callable[[Rules], None]] = {name: load(task.rules) for name, task in TASKS.items()}
# Fields every request has and `params` leaves out (the webhook's URL may hold a token in its query).
NOT_PARAMS = {"task", "model", "retries", "webhook", "webhook_events_filter", "priority"}


@dataclass
class Resolved:
    task: str
    model: str
    params: dict[str, Any]
    images: dict[str, DecodedImage] = field(default_factory=dict)  # path -> the decoded input image
    retries: int = 0
    webhook: str | None = None  # where the job's events go (not in `params`: its query may hold a token)
    # The full URL of each LoRA whose query `params` leaves out (it may hold a token), by its index in `loras`.
    adapter_urls: dict[str, str] = field(default_factory=dict)
    webhook_events: list[str] = field(default_factory=list)
    priority: str = "normal"  # its class (service/jobs/keys.py PRIORITIES)

    def inputs(self) -> list[tuple[str, bytes]]:
        """The job's input files, by the names the worker reads them under."""
        return [(input_name(path, image.format), image.data) for path, image in self.images.items()]


async def resolve(req, catalog: Catalog, settings: Settings, owned: dict[str, dict] | None = None) -> Resolved:
    """`owned`: the adapters the caller's API key trained, by name (service/adapter_registry.py)."""
    task = req.task
    row = TASKS[task]
    model = req.model or catalog.default_for(task)
    names = catalog.models_for(task)
    if model is None or model not in names:
        raise ValidationFailed([field_error("model", f"must be one of {names} for task {task}")])
    found = image_values(req)
    params = req.model_dump(exclude=NOT_PARAMS | {path for path, _ in found if "." not in path})
    params["seed"] = req.seed if req.seed is not None else secrets.randbelow(2**32)
    rules = Rules(req, catalog.spec(model), catalog, settings, params, owned=owned or {})
    for path, ref in found:
        try:
            rules.images[path] = await read_image(ref, settings)
        except ImageRejected as exc:
            rules.error(path, str(exc))
    RULES[task](rules)
    if row.adapters:
        shared.loras(rules)
        shared.embeddings(rules)
    if row.control:
        shared.control(rules)
    await shared.webhook(rules)
    if rules.errors:
        raise ValidationFailed(rules.errors)
    for path, image in rules.images.items():
        inputs.place(params, path, inputs.entry(input_name(path, image.format), image.width, image.height))
    params, adapter_urls = lora_urls.split(params)
    return Resolved(task=task, model=model, params=params, images=rules.images, retries=req.retries,
                    adapter_urls=adapter_urls,
                    webhook=req.webhook, webhook_events=list(req.webhook_events_filter) if req.webhook else [],
                    priority=req.priority)
