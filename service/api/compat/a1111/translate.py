"""An AUTOMATIC1111 txt2img or img2img request -> the native request bodies that make its images.

txt2img runs the model's text-to-image task, with `hires` when `enable_hr` asks for the hires fix; img2img
runs `img2img`, or `inpaint` when the request has a `mask` (A1111's inpainting fields map onto inpaint's).

A1111 makes `batch_size` × `n_iter` images, image i with seed `seed + i` (a random seed when -1, drawn once).
A native job makes at most its task's `num_images` limit, image i with its seed + i: so the images are
split into jobs of at most that many, each job's seed where its first image's falls. The model is the
request's `override_settings.sd_model_checkpoint`, else the key's remembered checkpoint, else the default;
its kind picks the native task (`service/api/compat/models.py`). What the native task cannot take is
dropped with a warning: Turbo has its own sampler, no guidance and no negative prompt, and at most 4 steps.
FLUX.1's guidance is a distilled embedding, not CFG: Forge's `distilled_cfg_scale` sets it, and A1111's usual
`cfg_scale` (7) runs as the model's own guidance, with a warning, instead of a burnt image; a model distilled
to run without guidance (FLUX.1 schnell, SD 3.5 large-turbo) gets none. Flow-matching models run "Euler" with
the schedule "Simple" (samplers.choose_for).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

from service.api.compat.a1111 import samplers, upscalers
from service.api.compat.a1111.checkpoints import find
from service.api.compat.a1111.fields import IMG2IMG, MAX_SEED, TXT2IMG, Reader, on, unsupported
from service.api.compat.a1111.prompt_loras import take_loras
from service.api.compat.models import default_text_model, fit, image_task, inpaint_task, limit, text_task
from service.api.errors import ValidationFailed, field_error
from service.api.inputs import inline_image_size
from service.api.requests import REQUESTS
from service.catalog import Catalog

MAX_IMAGES = 16  # batch_size × n_iter of one call: the answer carries every image, base64, in one JSON body
CHECKPOINT_FIELD = "override_settings.sd_model_checkpoint"
TURBO_MAX_STEPS = 4
# inpainting_fill (A1111's "Masked content") -> inpaint's `fill`
FILLS = ("fill", "original", "noise", "nothing")
HR_STRENGTH = 0.7  # A1111's hires denoising strength when a request gives none (its UI's default, webuiapi's)


@dataclass
class Plan:
    """What one call runs, and what its answer reports (A1111's names and values)."""

    mode: str  # "txt2img" | "img2img"
    model: str
    task: str  # the native task: txt2img, sdxl or turbo for txt2img; img2img, or inpaint (a mask)
    bodies: list[dict]  # native request bodies, in image order
    seeds: list[int]  # each image's seed
    prompt: str  # as sent, with its <lora:…> tags (A1111 reports it so)
    negative_prompt: str
    steps: int
    cfg_scale: float
    sampler_name: str
    schedule: str  # A1111's schedule-type label
    batch_size: int
    n_iter: int
    subseed: int
    denoising_strength: float | None
    send_images: bool
    parameters: dict  # the request as A1111 echoes it
    warnings: list[str] = field(default_factory=list)
    names: dict = field(default_factory=dict)  # native field -> the A1111 field it came from, for this request


SERVES = {"txt2img": text_task, "img2img": image_task, "inpaint": inpaint_task}


def _inpainting_model(catalog: Catalog, name) -> str | None:
    """A model that serves only inpaint (an inpainting checkpoint: not in sd-models), by its name."""
    if not isinstance(name, str):
        return None
    bare = name.strip().rsplit(" [", 1)[0].lower()
    return next((m for m in catalog.models_for("inpaint") if m.lower() == bare), None)


def model_for(catalog: Catalog, mode: str, requested, remembered: str | None) -> tuple[str, list[str]]:
    """The Fresco model a call runs on, and warnings. `mode`: txt2img, img2img or inpaint (img2img with a
    mask). `requested`: the request's checkpoint (a 422 when it is not one); `remembered`: the key's (POST
    /options), falling back to the default when it no longer fits. Inpainting runs on the key's checkpoint
    as A1111 does, else on the inpaint task's default (an inpainting checkpoint where there is one)."""
    serves = SERVES[mode]
    if requested not in (None, ""):
        model = find(catalog, requested) or (_inpainting_model(catalog, requested) if mode == "inpaint" else None)
        if model is None or serves(catalog, model) is None:
            what = "inpainting" if mode == "inpaint" else mode
            raise ValidationFailed([field_error(CHECKPOINT_FIELD, f"is no checkpoint of this server for {what}; "
                                                                  f"GET /sdapi/v1/sd-models lists them")])
        return model, []
    if remembered is not None and remembered in catalog.models and serves(catalog, remembered):
        return remembered, []
    warnings = [f"the checkpoint set with /sdapi/v1/options ({remembered}) is no longer served; used the default"] \
        if remembered is not None and remembered not in catalog.models else []
    model = catalog.default_for("inpaint") if mode == "inpaint" else default_text_model(catalog)
    if mode == "inpaint" and remembered in catalog.models and model is not None:
        warnings.append(f"the checkpoint set with /sdapi/v1/options ({remembered}) cannot inpaint; used {model}")
    if mode == "img2img" and (model is None or not image_task(catalog, model)):
        model = catalog.default_for("img2img")
    if model is None:
        raise ValidationFailed([field_error(CHECKPOINT_FIELD, f"this server has no model for {mode}")])
    return model, warnings


def _echo(defaults: dict, body: dict) -> dict:
    """`parameters`: A1111's fields at their defaults, overlaid with the request's (never a field A1111
    does not know: SillyTavern puts its `auth` in the body)."""
    return {name: body.get(name, default) for name, default in defaults.items()}


@dataclass
class Asked:
    """What an A1111 request asks for, read with A1111's leniency (`fields.Reader`)."""

    prompt: str
    negative_prompt: str
    batch_size: int
    n_iter: int
    steps: int | None  # None: not given
    cfg_scale: float | None
    distilled_cfg_scale: float | None  # Forge's FLUX.1 guidance
    width: int | None
    height: int | None
    seed: int | None  # None: random
    subseed: int
    sampler_name: str | None
    schedule: str | None
    strength: float | None
    image: str | None
    checkpoint: object
    send_images: bool
    apply_loras: bool  # false: A1111's disable_extra_networks
    include_init_images: bool  # echo init_images in `parameters`
    inpaint: dict | None = None  # img2img with a mask: inpaint's native fields (mask, mask_blur, fill, …)
    hires: dict | None = None  # txt2img with enable_hr: the hr_* fields, as sent


def _read_inpaint(read: Reader, body: dict) -> dict | None:
    """img2img's inpainting fields (None without a mask) as inpaint's native fields."""
    mask = body.get("mask")
    if not on(mask):
        return None
    if not isinstance(mask, str):
        read.errors.append(field_error("mask", "must be an image (base64 or a data URL)"))
    fill = read.int("inpainting_fill", 0)
    if isinstance(fill, int) and not 0 <= fill < len(FILLS):
        read.errors.append(field_error("inpainting_fill", "must be 0 (fill), 1 (original), 2 (latent noise) or 3 "
                                                          "(latent nothing)"))
        fill = 0
    blur = read.int("mask_blur")
    if blur is None:
        blur = read.int("mask_blur_x")
    only_masked = read.flag("inpaint_full_res", True)  # A1111's default: "only masked"
    padding = read.int("inpaint_full_res_padding", 0)
    return {"mask": mask, "mask_blur": blur, "fill": FILLS[fill], "mask_padding": padding if only_masked else None,
            "invert_mask": read.flag("inpainting_mask_invert", False)}


def _read_hires(read: Reader) -> dict | None:
    """txt2img's hires fix fields (None unless `enable_hr`)."""
    if not read.flag("enable_hr", False):
        return None
    return {"scale": read.number("hr_scale", 2.0), "resize_x": read.int("hr_resize_x", 0),
            "resize_y": read.int("hr_resize_y", 0), "upscaler": read.body.get("hr_upscaler"),
            "steps": read.int("hr_second_pass_steps", 0)}


def read_request(mode: str, body) -> Asked:
    """The request's fields; a 422 naming each bad A1111 field."""
    if not isinstance(body, dict):
        raise ValidationFailed([field_error("body", "must be a JSON object")])
    read = Reader(body)
    asked = Asked(
        prompt=read.text("prompt", ""), negative_prompt=read.text("negative_prompt", ""),
        batch_size=read.int("batch_size", 1), n_iter=read.int("n_iter", 1), steps=read.int("steps"),
        cfg_scale=read.number("cfg_scale"), distilled_cfg_scale=read.number("distilled_cfg_scale"),
        width=read.int("width"), height=read.int("height"), seed=read.seed(),
        subseed=read.int("subseed", -1), sampler_name=read.text("sampler_name") or read.text("sampler_index"),
        schedule=read.text("scheduler"),
        strength=read.number("denoising_strength", 0.75 if mode == "img2img" else None),
        image=None, checkpoint=read.mapping("override_settings").get("sd_model_checkpoint"),
        send_images=read.flag("send_images", True), apply_loras=not read.flag("disable_extra_networks", False),
        include_init_images=read.flag("include_init_images", False))
    if mode == "img2img":
        images = body.get("init_images")
        if not isinstance(images, list) or not images or not isinstance(images[0], str) or not images[0]:
            read.errors.append(field_error("init_images", "must hold at least one image (base64 or a data URL)"))
        else:
            asked.image = images[0]
        asked.inpaint = _read_inpaint(read, body)
    else:
        asked.hires = _read_hires(read)
    for name in ("batch_size", "n_iter"):
        if isinstance(getattr(asked, name), int) and getattr(asked, name) < 1:
            read.errors.append(field_error(name, "must be at least 1"))
    if read.errors:
        raise ValidationFailed(read.errors)
    if asked.batch_size * asked.n_iter > MAX_IMAGES:
        raise ValidationFailed([field_error("batch_size", f"batch_size × n_iter must be at most {MAX_IMAGES}")])
    return asked


def _turbo(asked: Asked, mode: str, warnings: list[str]) -> int:
    """Turbo's steps for the request (1 to 4), warning about what Turbo ignores."""
    if asked.sampler_name or asked.schedule:
        warnings.append("turbo models run their own sampler (Euler a, trailing); sampler_name and scheduler "
                        "were ignored")
    if asked.cfg_scale:
        warnings.append("turbo models run without guidance; cfg_scale was ignored")
    if asked.negative_prompt:
        warnings.append("turbo models take no negative prompt; it was ignored")
    if asked.steps is None:  # one step; for img2img, enough that steps × strength makes one
        strength = asked.strength if mode == "img2img" else None
        return 1 if strength is None or strength <= 0 else min(TURBO_MAX_STEPS, math.ceil(1 / strength))
    if asked.steps > TURBO_MAX_STEPS:
        warnings.append(f"turbo models run 1 to {TURBO_MAX_STEPS} steps; ran {TURBO_MAX_STEPS}")
        return TURBO_MAX_STEPS
    return asked.steps


def plan(catalog: Catalog, mode: str, body, remembered: str | None, owned: dict[str, dict] | None = None) -> Plan:
    """The native bodies of an A1111 `mode` ("txt2img" | "img2img") request; 422 naming A1111 fields.
    `owned`: the LoRAs the caller's key trained, which `<lora:…>` tags may name."""
    asked = read_request(mode, body)
    inpainting = asked.inpaint is not None
    model, warnings = model_for(catalog, "inpaint" if inpainting else mode, asked.checkpoint, remembered)
    task = text_task(catalog, model) if mode == "txt2img" else "inpaint" if inpainting else image_task(catalog, model)
    taken = take_loras(catalog, model, asked.prompt, asked.apply_loras, owned)
    warnings += taken.warnings + unsupported(body, mode == "img2img")
    fields = {"model": model, "prompt": taken.prompt or " ",  # A1111 allows an empty prompt: run it unconditioned
              "negative_prompt": asked.negative_prompt, "width": asked.width, "height": asked.height,
              "loras": taken.loras, "image": asked.image, "strength": asked.strength if mode == "img2img" else None}
    names: dict = {}
    if inpainting:
        fields.update(asked.inpaint)
        _check_inpaint_size(asked, warnings)
    spec = catalog.models[model]
    kind = spec.kind_row
    if kind.own_scheduler:  # Turbo: its own sampler, no guidance, 1 to 4 steps
        choice, cfg = samplers.Choice(kind.scheduler, "Euler a", "Automatic"), 0.0
        fields["steps"] = steps = _turbo(asked, mode, warnings)
    else:
        choice = samplers.choose_for(kind, asked.sampler_name, asked.schedule)
        warnings += choice.warnings
        cfg, guidance = _guidance(spec, asked, warnings, names)
        # A1111's default steps (50), or the model's where its kind's models differ (FLUX.1 schnell: 4)
        steps = asked.steps if asked.steps is not None else spec.defaults()["steps"] if kind.variants else 50
        fields.update(steps=steps, guidance_scale=guidance, scheduler=choice.scheduler)
    strength = asked.strength
    if asked.hires is not None:
        if "hires" in REQUESTS[task].model_fields:
            fields["hires"] = _hires(catalog, model, task, asked, warnings, names)
            strength = fields["hires"]["strength"]
        else:
            warnings.append(f"the hires fix is not available on {kind.name} models; the image was made at "
                            f"width × height")
    base, dropped = fit(task, {k: v for k, v in fields.items() if v is not None})
    if "loras" in dropped and taken.loras:
        warnings.append(f"model {model} takes no LoRAs; the prompt's were skipped")

    total = asked.batch_size * asked.n_iter
    first = secrets.randbelow(MAX_SEED + 1) if asked.seed is None else asked.seed
    seeds = [(first + i) % (MAX_SEED + 1) for i in range(total)]
    per_job = limit(task, "num_images") or 1
    bodies = [{**base, "seed": seeds[start], "num_images": min(per_job, total - start)}
              for start in range(0, total, per_job)]
    parameters = _echo(IMG2IMG if mode == "img2img" else TXT2IMG, body)
    parameters["width"], parameters["height"] = asked.width, asked.height  # absent: the model's size, filled later
    if mode == "img2img" and not asked.include_init_images:
        parameters["init_images"] = parameters["mask"] = None
    return Plan(mode=mode, model=model, task=task, bodies=bodies, seeds=seeds, prompt=asked.prompt,
                negative_prompt=asked.negative_prompt, steps=steps, cfg_scale=cfg, sampler_name=choice.sampler_name,
                schedule=choice.schedule_label, batch_size=asked.batch_size, n_iter=asked.n_iter,
                subseed=asked.subseed, denoising_strength=strength, send_images=asked.send_images,
                parameters=parameters, warnings=warnings, names=names)


def _guidance(spec, asked: Asked, warnings: list[str], names: dict) -> tuple[float, float]:
    """(the "CFG scale" A1111 reports, the native `guidance_scale`) for a model that takes a scheduler: the
    request's `cfg_scale` (A1111's default 7, or the model's own where its kind's models differ); on a model
    distilled to run without guidance, none; on one whose guidance is a distilled embedding (FLUX.1 dev),
    Forge's `distilled_cfg_scale`, else the model's own (A1111's cfg_scale is not that), and "CFG scale" 1."""
    kind, default = spec.kind_row, spec.defaults()["guidance_scale"]
    cfg, distilled = asked.cfg_scale, asked.distilled_cfg_scale
    reported = 1.0 if kind.distilled_guidance else 0.0
    if not spec.guidance:
        if distilled:
            warnings.append(f"model {spec.name} runs without guidance; distilled_cfg_scale was ignored")
        elif cfg is not None and cfg > 1:
            warnings.append(f"model {spec.name} runs without guidance; cfg_scale was ignored")
        return reported, 0.0
    if kind.distilled_guidance:
        if distilled is not None:
            names["guidance_scale"] = "distilled_cfg_scale"
            return reported, distilled
        if cfg is not None and cfg > 1:
            warnings.append(f"{kind.name} models take a distilled guidance, not CFG: cfg_scale {cfg:g} ran as model "
                            f"{spec.name}'s guidance {default:g} (distilled_cfg_scale sets it)")
        return reported, default
    if cfg is None:
        cfg = default if kind.variants else 7.0
    return cfg, cfg


def _check_inpaint_size(asked: Asked, warnings: list[str]) -> None:
    """A warning when width and height ask for another size than the image's (inpaint keeps the input's)."""
    size = inline_image_size(asked.image)
    if size is not None and (asked.width or asked.height) and (asked.width or size[0], asked.height or size[1]) != size:
        warnings.append(f"inpainting keeps the input image's size ({size[0]}×{size[1]}); width and height were "
                        f"ignored")


def _hires(catalog: Catalog, model: str, task: str, asked: Asked, warnings: list[str], names: dict) -> dict:
    """The native `hires` of A1111's hires fix. `hr_resize_x`/`hr_resize_y`, when set, give the target size and
    the scale is derived from it (a target of another aspect ratio: the largest even scale that fits it, as
    Fresco scales both sides alike and crops nothing); else `hr_scale`. `hr_second_pass_steps` 0: the job's
    steps."""
    h = asked.hires
    spec = catalog.models[model]
    width = asked.width or REQUESTS[task].model_fields["width"].default or spec.defaults().get("width")
    height = asked.height or REQUESTS[task].model_fields["height"].default or spec.defaults().get("height")
    x, y = max(h["resize_x"] or 0, 0), max(h["resize_y"] or 0, 0)
    if (x or y) and width and height:
        sx, sy = x / width, y / height
        scale = sx if not y else sy if not x else min(sx, sy)
        names["hires.scale"] = "hr_resize_x" if x else "hr_resize_y"
        if x and y and not math.isclose(sx, sy):
            warnings.append(f"hires fix: {x}×{y} (hr_resize_x × hr_resize_y) is not {width}×{height} scaled evenly; "
                            f"upscaled by {scale:g} to fit within it")
    else:
        scale = h["scale"]
    try:
        upscaler = upscalers.for_hires(catalog, h["upscaler"], warnings)
    except upscalers.UnknownUpscaler as exc:
        raise ValidationFailed([field_error("hr_upscaler", str(exc))]) from None
    hires = {"scale": float(scale), "upscaler": upscaler,
             "strength": HR_STRENGTH if asked.strength is None else asked.strength}
    if h["steps"] and h["steps"] > 0:
        hires["steps"] = h["steps"]
    return hires
