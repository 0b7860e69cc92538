"""Which native task runs a compatible API's request, and on which model.

OpenAI and AUTOMATIC1111 clients name a checkpoint, not a task. Text-to-image on a model runs the task its
kind is made for (the family table's `text_task`): an SDXL model the `sdxl` task (its refiner too, when it
has one), a Turbo model `turbo`, an SD 1.x/2.x model `txt2img`. Image-to-image is always `img2img`, and
with a mask `inpaint` (on the model when it serves it, else the task's default: an inpainting checkpoint). A
request body is then cut to the fields that task's native request has (`fit`): what a client sends that
the task has no use for (a guidance scale for Turbo, say) is dropped and named, never a 422.
"""

from __future__ import annotations

from service.api.requests import REQUESTS
from service.catalog import Catalog

# A client that names no model gets the default model of the first of these the models file serves.
TEXT_TASK_ORDER = ("txt2img", "sdxl", "turbo")


def text_task(catalog: Catalog, model: str) -> str | None:
    """The task that runs text-to-image on `model`, or None when the model does none (SVD, unknown)."""
    spec = catalog.models.get(model)
    if spec is None:
        return None
    task = spec.kind_row.text_task
    return task if task and task in spec.tasks else None


def image_task(catalog: Catalog, model: str) -> str | None:
    """`img2img` when `model` serves it, else None."""
    spec = catalog.models.get(model)
    return "img2img" if spec is not None and "img2img" in spec.tasks else None


def inpaint_task(catalog: Catalog, model: str) -> str | None:
    """`inpaint` when `model` serves it (an SD or SDXL model, or a dedicated inpainting checkpoint), else None."""
    spec = catalog.models.get(model)
    return "inpaint" if spec is not None and "inpaint" in spec.tasks else None


def model_named(catalog: Catalog, name: str, aliases: dict[str, str]) -> str:
    """The model a client's name means: a configured alias (FRESCO_OPENAI_MODEL_ALIASES), a model's own name,
    else the first model (in models-file order) whose variant goes by that name (`flux.1-schnell`,
    `sd3.5-large`: the family table's Variant.aliases), or its source's last part (`FLUX.1-dev`), in any case.
    A name none of these mean comes back as it is (the caller says which names work)."""
    if name in aliases:
        return aliases[name]
    if name in catalog.models:
        return name
    low = name.lower()
    for model, spec in catalog.models.items():
        variant = spec.variant_row
        if variant is None:
            continue
        if low in variant.aliases or low == spec.source.rstrip("/").rsplit("/", 1)[-1].lower():
            return model
    return name


def variant_aliases(catalog: Catalog) -> dict[str, str]:
    """Each built-in alias a model of `catalog` answers to (model_named), to the model."""
    out: dict[str, str] = {}
    for model, spec in catalog.models.items():
        if spec.variant_row is not None:
            for alias in spec.variant_row.aliases:
                out.setdefault(alias, model)
    return {alias: model for alias, model in out.items() if alias not in catalog.models}


def default_text_model(catalog: Catalog) -> str | None:
    for task in TEXT_TASK_ORDER:
        model = catalog.default_for(task)
        if model is not None:
            return model
    return None


def text_models(catalog: Catalog) -> list[str]:
    """Every model that does text-to-image, in models-file order."""
    return [name for name in catalog.models if text_task(catalog, name)]


def fit(task: str, fields: dict) -> tuple[dict, list[str]]:
    """`fields` cut to those `task`'s native request has, with `task` set; and the names dropped."""
    known = REQUESTS[task].model_fields
    body = {"task": task}
    dropped = []
    for name, value in fields.items():
        if name in known:
            body[name] = value
        else:
            dropped.append(name)
    return body, dropped


def limit(task: str, field: str, bound: str = "le"):
    """A native request field's bound (`le`, `ge`, `multiple_of`), from its schema: e.g. the most
    `num_images` one job of `task` may make."""
    for meta in REQUESTS[task].model_fields[field].metadata:
        value = getattr(meta, bound, None)
        if value is not None:
            return value
    return None
