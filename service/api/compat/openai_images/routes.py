"""`POST /v1/images/generations` and `POST /v1/images/edits`: OpenAI's Images API over the native path.

A request becomes one or more native request bodies (text-to-image on the model's task, img2img, or
inpaint for an edit with a mask),
validated and queued through `service.api.submit` like `POST /generate`'s and held until they end
(`run_to_end`); the finished jobs become OpenAI's answer,
`{"created", "data": [{"url" | "b64_json", "revised_prompt"}]}`.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field

from fastapi import APIRouter, Request

from service.api.compat.models import (default_text_model, fit, image_task, inpaint_task, limit, model_named,
                                       text_task, variant_aliases)
from service.api.compat.openai_images import mask as masks
from service.api.compat.openai_images.errors import OpenAIError, OpenAIRoute
from service.api.compat.openai_images.forms import GenerationForm, parse_size, read_generation, read_multipart
from service.api.compat.openai_images.schema import EDIT_BODY, GENERATION_BODY, RESPONSES
from service.api.compat.waiting import WaitTimedOut, result_files, run_to_end
from service.api.deps import Context, Ctx
from service.api.requests import REQUESTS
from service.api.errors import ValidationFailed, field_error, json_response

router = APIRouter(route_class=OpenAIRoute)
# img2img strength for an edit: the prompt visibly reshapes the picture while its layout and colours stay.
# (The native default, 0.5, barely follows an edit prompt; 1.0 ignores the image.) `strength` overrides it.
EDIT_STRENGTH = 0.7
NATIVE_TO_OPENAI = {"width": "size", "height": "size", "num_images": "n"}
SQUARES = (256, 512, 768, 1024, 1536, 2048)  # sizes offered as examples, where the task's limits allow them


@dataclass
class Plan:
    """One OpenAI request, translated: the model and task it runs on and the native fields common to its jobs."""

    model: str
    task: str
    fields: dict = field(default_factory=dict)


def choose(c: Context, form: GenerationForm, task_of, default: str | None) -> Plan:
    """The model (`form.model`: an alias, a model name, or a name of its variant such as `flux.1-schnell`;
    empty or absent: `default`) and its task."""
    aliases = c.settings.openai_model_aliases
    model = model_named(c.catalog, form.model, aliases) if form.model else default
    task = task_of(c.catalog, model) if model else None
    if task is None:
        usable = [name for name in c.catalog.models if task_of(c.catalog, name)]
        usable += [alias for alias, name in {**variant_aliases(c.catalog), **aliases}.items()
                   if name in c.catalog.models and task_of(c.catalog, name)]
        raise ValidationFailed([field_error("model", f"must be one of {usable}")])
    return Plan(model, task)


def size_rule(c: Context, plan: Plan) -> str:
    low, high, step = (limit(plan.task, "width", bound) for bound in ("ge", "le", "multiple_of"))
    step = max(step, c.catalog.spec(plan.model).kind_row.size_multiple)  # 16 for SD 3.5 and FLUX.1
    top = c.settings.max_pixels
    examples = [f"{s}x{s}" for s in SQUARES if low <= s <= high and s * s <= top]
    return (f'must be "auto" or WIDTHxHEIGHT with each side {low} to {high} and a multiple of {step}, and '
            f"width × height at most {top} pixels, for model {plan.model} (e.g. {', '.join(examples)})")


def translate(c: Context, plan: Plan, form: GenerationForm, **extra) -> None:
    """The native fields of `form` (and `extra`) into `plan.fields`. A prompt longer than the native limit is
    cut to it (and `revised_prompt` says so) rather than refused."""
    sized = "width" in REQUESTS[plan.task].model_fields  # inpaint keeps the image's size
    try:
        size = parse_size(form.size)
    except ValueError:
        rule = size_rule(c, plan) if sized else 'must be "auto" or WIDTHxHEIGHT (with a mask the output keeps ' \
                                                'the image\'s size)'
        raise ValidationFailed([field_error("size", rule)]) from None
    prompt = form.prompt and form.prompt[:limit(plan.task, "prompt", "max_length")]  # OpenAI's limit is 32000
    native = {"prompt": prompt, "model": plan.model, "output_format": form.output_format,
              "negative_prompt": form.negative_prompt, "steps": form.steps, "guidance_scale": form.guidance_scale,
              **extra}
    if size is not None and sized:
        native["width"], native["height"] = size
    plan.fields = {k: v for k, v in native.items() if v is not None}


def bodies(plan: Plan, n: int, seed: int | None) -> list[dict]:
    """`n` images as native bodies: one job while one job may make them all, else several, whose seeds
    follow on from each other as one job's images do (so a seed reproduces the whole answer). The bodies differ
    only in those two fields: past the first, none can fail validation and leave the jobs before it orphaned."""
    per_job = limit(plan.task, "num_images")
    counts = [min(per_job, n - start) for start in range(0, n, per_job)]
    if seed is None and len(counts) > 1:
        seed = secrets.randbelow(2**32)
    out = []
    for k, count in enumerate(counts):
        extra = {"num_images": count} if seed is None else {"num_images": count, "seed": (seed + k * per_job) % 2**32}
        out.append(fit(plan.task, {**plan.fields, **extra})[0])
    return out


async def run(c: Context, request: Request, plan: Plan, form: GenerationForm, owner: str | None) -> dict:
    """Submit the plan's jobs and wait for them: their terminal records; OpenAI's errors when they fail."""
    try:
        records = await run_to_end(c, bodies(plan, form.n or 1, form.seed), owner)
    except ValidationFailed as exc:
        raise ValidationFailed(openai_fields(c, plan, exc.fields)) from None
    except WaitTimedOut as exc:
        raise OpenAIError(504, str(exc), code="timeout", retry=False) from None
    for h in records:
        if h["status"] != "succeeded":
            error = c.view(h, request)["error"] or {}
            raise OpenAIError(500, f"the job failed: {error.get('message') or h['status']}",
                              code=error.get("code") or h["status"], retry=False)
    return await answer(c, request, records, form, plan.fields.get("prompt"))


async def answer(c: Context, request: Request, records: list[dict], form: GenerationForm, prompt: str) -> dict:
    """OpenAI's answer: each image's result URL (signed when API keys are on) or its bytes in base64."""
    b64 = (form.response_format or default_format(form.model)) == "b64_json"
    data = []
    for h in records:
        images = c.view(h, request)["result"]["images"]
        if b64:
            items = [{"b64_json": base64.b64encode(raw).decode()} for raw in await result_files(c, h)]
        else:
            items = [{"url": image["url"]} for image in images]
        data += [{**item, "revised_prompt": prompt} for item in items]
    first = images[0]  # every job ran at one size and format
    return {"created": int(time.time()), "data": data, "output_format": first["content_type"].split("/")[-1],
            "size": f"{first['width']}x{first['height']}"}


def default_format(model: str | None) -> str:
    """OpenAI answers with URLs, except for its gpt-image models, which always answer base64: clients that
    name one (Open WebUI, LibreChat) send no `response_format` and read `b64_json`."""
    return "b64_json" if model and model.startswith("gpt-image") else "url"


def openai_fields(c: Context, plan: Plan, fields: list[dict]) -> list[dict]:
    """The native validation's fields, named as OpenAI names them; every size problem as one `size` error
    that says which sizes work."""
    out, sized = [], False
    for f in fields:
        name = NATIVE_TO_OPENAI.get(f["field"], f["field"])
        if name == "size":
            if not sized:
                out.append(field_error("size", size_rule(c, plan)))
            sized = True
        else:
            out.append(field_error(name, f["message"]))
    return out


@router.post("/v1/images/generations", responses=RESPONSES, openapi_extra=GENERATION_BODY,
             summary="Create images (OpenAI Images API)")
async def generations(request: Request, c: Ctx):
    """Text-to-image on a Fresco model, answered when the images are done. See docs/openai.md."""
    owner = c.auth.owner(request)
    form = await read_generation(request, c.settings.max_body_bytes)
    await c.auth.rate_limit(owner)
    plan = choose(c, form, text_task, default_text_model(c.catalog))
    translate(c, plan, form)
    return json_response(await run(c, request, plan, form, owner))


def edit_task(catalog, model: str) -> str | None:
    """What an edit with a mask may name: a model that inpaints, or one that does img2img (then the
    inpaint task's default model runs it)."""
    return inpaint_task(catalog, model) or image_task(catalog, model)


def choose_inpaint(c: Context, form: GenerationForm) -> Plan:
    """An edit with a mask runs `inpaint`: on the named model when it inpaints, else on the task's
    default model (a dedicated inpainting checkpoint where there is one): OpenAI clients name one model for
    every edit, often an alias of a model that cannot inpaint (Turbo)."""
    default = c.catalog.default_for("inpaint")
    plan = choose(c, form, edit_task, default)
    if inpaint_task(c.catalog, plan.model):
        return Plan(plan.model, "inpaint")
    if default is None:
        raise ValidationFailed([field_error("mask", "this server has no model that inpaints; send the image "
                                                    "without a mask")])
    return Plan(default, "inpaint")


@router.post("/v1/images/edits", responses=RESPONSES, openapi_extra=EDIT_BODY,
             summary="Edit an image (OpenAI Images API): img2img, or inpaint with a mask")
async def edits(request: Request, c: Ctx):
    """img2img on one image (multipart, `image` or `image[]`), or inpaint with a `mask` (transparent =
    edit), answered when the images are done."""
    owner = c.auth.owner(request)
    form, image, mask = await read_multipart(request, c.settings.max_body_bytes)
    await c.auth.rate_limit(owner)
    if mask is None:
        plan = choose(c, form, image_task, c.catalog.default_for("img2img"))
        translate(c, plan, form, image=image, strength=EDIT_STRENGTH if form.strength is None else form.strength)
    else:  # the output keeps the image's size: `size` is dropped with the width and height inpaint has none of
        plan = choose_inpaint(c, form)
        translate(c, plan, form, image=image, mask=masks.native_mask(image, mask, c.settings),
                  strength=form.strength)
    return json_response(await run(c, request, plan, form, owner))
