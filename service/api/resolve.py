"""From a validated request to the job's full parameters: the rules that need the catalogue and settings.

Common to every task: the model (the task's default when absent), the seed (drawn when absent), the
input image (fetched, checked and decoded) where the task takes one, the pixel limit. Then one rule
function per task, registered in `RULES`. Every resolved parameter, the seed included, is reported
back in the JobView's `params`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Callable

from service.api.errors import ValidationFailed, field_error
from service.api.inputs import DecodedImage, ImageRejected, read_image
from service.catalog import Catalog, ModelSpec, adapter_url_problem
from service.settings import Settings
from service.tasks import TASKS
from service.webhooks import targets


@dataclass
class Resolved:
    task: str
    model: str
    params: dict[str, Any]
    image: DecodedImage | None = None
    retries: int = 0
    controls: list[DecodedImage] = field(default_factory=list)  # `control[i].image`, stored as control_name(i)
    webhook: str | None = None  # where the job's events go (not in `params`: its query may hold a token)
    webhook_events: list[str] = field(default_factory=list)

    def inputs(self) -> list[tuple[str, bytes]]:
        """The job's input files, by the names the worker reads them under."""
        files = [(self.image.filename, self.image.data)] if self.image is not None else []
        return files + [(control_name(i, c), c.data) for i, c in enumerate(self.controls)]


def control_name(i: int, image: DecodedImage) -> str:
    return f"control-{i}.{image.filename.rsplit('.', 1)[-1]}"


@dataclass
class Rules:
    """What a task's rule function gets: the request, its model, the settings, the decoded input image,
    the parameters so far (to complete), and the list of field errors (to add to)."""

    req: Any
    spec: ModelSpec
    catalog: Catalog
    settings: Settings
    image: DecodedImage | None
    params: dict[str, Any]
    errors: list[dict] = field(default_factory=list)
    controls: list[DecodedImage | None] = field(default_factory=list)  # decoded `control[i].image`

    def error(self, name: str, message: str) -> None:
        self.errors.append(field_error(name, message))

    def pixels(self, width: int, height: int) -> None:
        if width * height > self.settings.max_pixels:
            self.error("width", f"width × height must be at most {self.settings.max_pixels} pixels")


def _sdxl(r: Rules) -> None:
    r.pixels(r.req.width, r.req.height)
    if r.req.refiner and not r.spec.refiner:
        r.error("refiner", f"model {r.spec.name} has no refiner")
    r.params["refiner"] = bool(r.spec.refiner) if r.req.refiner is None else r.req.refiner


def _turbo(r: Rules) -> None:
    r.pixels(r.req.width, r.req.height)
    r.params["guidance_scale"] = 0.0


def _txt2img(r: Rules) -> None:
    """Size and guidance: the request's, else the model's own (GET /models lists them per model)."""
    defaults = r.spec.defaults()
    for name in ("width", "height", "guidance_scale"):
        if r.params.get(name) is None:
            r.params[name] = defaults[name]
    r.pixels(r.params["width"], r.params["height"])


def _img2img(r: Rules) -> None:
    req = r.req
    if int(req.steps * req.strength) < 1:
        r.error("strength", "steps × strength must be at least 1 (no denoising step would run)")
    if r.spec.kind == "turbo":
        if req.scheduler is not None:
            r.error("scheduler", "turbo models use their own scheduler")
        if req.guidance_scale:
            r.error("guidance_scale", "turbo models run without guidance (0)")
        r.params["scheduler"] = "turbo"
        r.params["guidance_scale"] = 0.0  # Turbo runs without classifier-free guidance
    else:
        r.params["scheduler"] = req.scheduler or "euler"
        if req.guidance_scale is None:
            r.params["guidance_scale"] = r.spec.defaults()["guidance_scale"]
    if r.image is not None:
        width = req.width or r.image.width // 8 * 8
        height = req.height or r.image.height // 8 * 8
        if width < 64 or height < 64:
            r.error("image", "must be at least 64 pixels on each side, or give width and height")
        r.pixels(width, height)
        r.params["width"], r.params["height"] = width, height


def _svd(r: Rules) -> None:
    req = r.req
    r.pixels(req.width, req.height)
    if req.min_guidance_scale > req.max_guidance_scale:
        r.error("min_guidance_scale", "must not exceed max_guidance_scale")
    max_frames = r.spec.num_frames or 14
    if req.num_frames is not None and req.num_frames > max_frames:
        r.error("num_frames", f"must be at most {max_frames} for model {r.spec.name}")
    r.params["num_frames"] = req.num_frames or max_frames


def _loras(r: Rules) -> None:
    """`loras`: each a LoRA that fits the model (by name), or an allowed URL; scales default to the
    adapter's own. The worker adds each one's content digest when it has loaded it."""
    out, seen = [], set()
    if r.req.loras and r.spec.memory == "minimal":
        r.error("loras", f"model {r.spec.name} runs with `memory: minimal` (layer-by-layer offloading), "
                         f"which takes no LoRAs")
        r.params["loras"] = []
        return
    for i, ref in enumerate(r.req.loras):
        at = f"loras[{i}]"
        if (ref.name is None) == (ref.url is None):
            r.error(at, "give either `name` or `url`")
            continue
        if ref.name is not None:
            adapter = r.catalog.adapters.get(ref.name)
            if adapter is None:
                r.error(f"{at}.name", "is no adapter of this server; GET /models lists each model's adapters")
                continue
            if adapter.kind != "lora":
                r.error(f"{at}.name", "is an embedding, not a LoRA: write its token in the prompt")
                continue
            if not adapter.fits(r.spec):
                fits = [m for m in r.catalog.models_for(r.req.task) if adapter.fits(r.catalog.spec(m))]
                r.error(f"{at}.name", f"does not fit model {r.spec.name}; for {r.req.task} it fits {fits}")
                continue
            scale = adapter.default_scale if ref.scale is None else ref.scale
            key, entry = ref.name, {"name": ref.name, "scale": scale}
        else:
            if not r.settings.allow_adapter_urls:
                r.error(f"{at}.url", "adapter URLs are not enabled on this server; name an adapter GET /models lists")
                continue
            problem = adapter_url_problem(ref.url, r.settings.image_url_schemes)
            if problem:
                r.error(f"{at}.url", problem)
                continue
            key, entry = ref.url, {"url": ref.url, "scale": 1.0 if ref.scale is None else ref.scale}
        if key in seen:
            r.error(at, "the same adapter is given twice")
        seen.add(key)
        out.append(entry)
    r.params["loras"] = out


def _control(r: Rules) -> None:
    """`control`: each a ControlNet that fits the model, its image decoded, start before end; the
    preprocessing defaults to what the ControlNet's kind needs. The worker reads each image from storage."""
    out = []
    for i, ref in enumerate(r.req.control):
        at = f"control[{i}]"
        net = r.catalog.controlnets.get(ref.model)
        if net is None:
            r.error(f"{at}.model", "is no ControlNet of this server; GET /models lists each model's ControlNets")
        elif not net.fits(r.spec):
            fits = [m for m in r.catalog.models_for(r.req.task) if net.fits(r.catalog.spec(m))]
            r.error(f"{at}.model", f"does not fit model {r.spec.name}; for {r.req.task} it fits {fits}")
        if ref.start >= ref.end:
            r.error(f"{at}.end", "must be greater than start")
        image = r.controls[i] if i < len(r.controls) else None
        if net is None or image is None:
            continue
        out.append({"model": ref.model, "kind": net.kind, "scale": ref.scale, "start": ref.start, "end": ref.end,
                    "preprocess": ref.preprocess or net.preprocess,
                    "image": {"name": control_name(i, image), "width": image.width, "height": image.height}})
    r.params["control"] = out


async def _webhook(r: Rules) -> None:
    """`webhook`: a URL this server may post to (service/webhooks/targets.py); the filter only with it."""
    if r.req.webhook is None:
        if "webhook_events_filter" in r.req.model_fields_set:
            r.error("webhook_events_filter", "applies only with `webhook`")
        return
    problem = await targets.problem(r.req.webhook, r.settings)
    if problem:
        r.error("webhook", problem)


RULES: dict[str, Callable[[Rules], None]] = {"sdxl": _sdxl, "turbo": _turbo, "img2img": _img2img, "svd": _svd,
                                             "txt2img": _txt2img}


async def resolve(req, catalog: Catalog, settings: Settings) -> Resolved:
    task = req.task
    model = req.model or catalog.default_for(task)
    names = catalog.models_for(task)
    if model is None or model not in names:
        raise ValidationFailed([field_error("model", f"must be one of {names} for task {task}")])
    params = req.model_dump(exclude={"task", "model", "image", "retries", "webhook", "webhook_events_filter"})
    params["seed"] = req.seed if req.seed is not None else secrets.randbelow(2**32)
    rules = Rules(req, catalog.spec(model), catalog, settings, None, params)
    if TASKS[task].takes_image:
        try:
            rules.image = await read_image(req.image, settings)
        except ImageRejected as exc:
            rules.error("image", str(exc))
    for i, ref in enumerate(getattr(req, "control", None) or []):
        try:
            rules.controls.append(await read_image(ref.image, settings))
        except ImageRejected as exc:
            rules.controls.append(None)
            rules.error(f"control[{i}].image", str(exc))
    RULES[task](rules)
    if TASKS[task].adapters:
        _loras(rules)
    if TASKS[task].control:
        _control(rules)
    await _webhook(rules)
    if rules.errors:
        raise ValidationFailed(rules.errors)
    if rules.image is not None:
        params["image"] = {"name": rules.image.filename, "width": rules.image.width, "height": rules.image.height}
    return Resolved(task=task, model=model, params=params, image=rules.image, retries=req.retries,
                    controls=[c for c in rules.controls if c is not None], webhook=req.webhook,
                    webhook_events=list(req.webhook_events_filter) if req.webhook else [])
