"""The rules of a request that need the catalogue and the settings: one function per task (each row of
the task table names its own, `service/api/rules:<task>`), and the rules every task with LoRAs,
ControlNets or a webhook shares. Each completes the job's `params` and adds field errors; what differs
per model kind (its own scheduler, no guidance, its defaults) comes from the family table.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from service import adapter_registry, masks
from service.api.errors import field_error
from service.api.inputs import DecodedImage
from service.catalog import Catalog, ModelSpec, adapter_url_problem
from service.families import FAMILIES
from service.settings import Settings
from service.webhooks import targets


@dataclass
class Rules:
    """What a task's rule function gets: the request, its model, the settings, its decoded input images
    by path (`image`, `control[0].image`), the parameters so far (to complete), the list of field
    errors (to add to), and the adapters the caller's API key trained, by name (service/adapter_registry.py)."""

    req: Any
    spec: ModelSpec
    catalog: Catalog
    settings: Settings
    params: dict[str, Any]
    images: dict[str, DecodedImage] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)
    owned: dict[str, dict] = field(default_factory=dict)

    def error(self, name: str, message: str) -> None:
        self.errors.append(field_error(name, message))

    def pixels(self, width: int, height: int) -> None:
        if width * height > self.settings.max_pixels:
            self.error("width", f"width × height must be at most {self.settings.max_pixels} pixels")

    def sides(self) -> None:
        """The request's own width and height: multiples of what the model's kind works in (16 for sd3, flux)."""
        step = self.spec.kind_row.size_multiple
        for name in ("width", "height"):
            value = getattr(self.req, name, None)
            if value is not None and value % step:
                self.error(name, f"must be a multiple of {step} for {self.spec.kind} models (model {self.spec.name})")


# ---- one per task


def sdxl(r: Rules) -> None:
    r.pixels(r.req.width, r.req.height)
    _scheduler(r)
    if r.req.refiner and not r.spec.refiner:
        r.error("refiner", f"model {r.spec.name} has no refiner")
    r.params["refiner"] = bool(r.spec.refiner) if r.req.refiner is None else r.req.refiner
    hires(r, r.req.width, r.req.height)


def turbo(r: Rules) -> None:
    r.pixels(r.req.width, r.req.height)
    r.params["guidance_scale"] = 0.0


def txt2img(r: Rules) -> None:
    """Size, steps, scheduler and guidance: the request's, else the model's own (GET /models lists them per
    model)."""
    defaults = r.spec.defaults()
    for name in ("width", "height"):
        if r.params.get(name) is None:
            r.params[name] = defaults[name]
    r.sides()
    _sampling(r)
    r.pixels(r.params["width"], r.params["height"])
    hires(r, r.params["width"], r.params["height"])


def hires(r: Rules, width: int, height: int) -> None:
    """`hires` on txt2img and sdxl: a known upscaler; the final size (sides × scale, floored to multiples
    of 8, or of the kind's larger step) within the pixel limit; its steps default to the job's."""
    h = r.req.hires
    if h is None:
        r.params.pop("hires", None)
        return
    upscalers = r.catalog.models_for("upscale")
    if h.upscaler != "latent" and h.upscaler not in upscalers:
        r.error("hires.upscaler", f"must be latent or an upscaler of this server: {['latent', *upscalers]}")
    step = r.spec.kind_row.size_multiple
    final = (int(width * h.scale) // step * step, int(height * h.scale) // step * step)
    if final[0] * final[1] > r.settings.max_pixels:
        r.error("hires.scale", f"the final size {final[0]}×{final[1]} must be at most {r.settings.max_pixels} "
                               f"pixels")
    steps = h.steps or r.params["steps"]
    if int(steps * h.strength) < 1:
        r.error("hires.strength", "steps × strength must be at least 1 (no denoising step would run)")
    r.params["hires"] = {"scale": h.scale, "upscaler": h.upscaler, "strength": h.strength, "steps": steps,
                         "width": final[0], "height": final[1]}


def _sampling(r: Rules) -> None:
    """txt2img's, img2img's and inpaint's steps (× strength), scheduler, guidance and T5 prompt tokens: the
    request's, else the model's (its defaults: its variant's or kind's, service/catalog/models.py)."""
    req, spec = r.req, r.spec
    defaults = spec.defaults()
    steps = r.params["steps"] = req.steps or defaults["steps"]
    strength = getattr(req, "strength", None)
    if strength is not None and int(steps * strength) < 1:
        r.error("strength", "steps × strength must be at least 1 (no denoising step would run)")
    _scheduler(r)
    if not spec.guidance:
        if req.guidance_scale:
            variant = spec.variant_row
            r.error("guidance_scale", f"model {spec.name} ({spec.kind}{f' {variant.name}' if variant else ''}) "
                                      f"runs without guidance: give 0 or leave it out")
        r.params["guidance_scale"] = 0.0
    elif req.guidance_scale is None:
        r.params["guidance_scale"] = defaults["guidance_scale"]
    limit = spec.sequence_limit
    if limit is None:
        if req.max_sequence_length is not None:
            r.error("max_sequence_length", f"is the T5 text encoder's prompt length; model {spec.name} has none")
        r.params.pop("max_sequence_length", None)
    elif req.max_sequence_length is not None and req.max_sequence_length > limit:
        r.error("max_sequence_length", f"must be at most {limit} for model {spec.name}")
    else:
        r.params["max_sequence_length"] = req.max_sequence_length or defaults["max_sequence_length"]


def _scheduler(r: Rules) -> None:
    """The scheduler: the request's when the model's kind takes it (its row's `schedulers`), else its kind's
    own; a kind with a scheduler of its own (Turbo) takes none."""
    req, spec, kind = r.req, r.spec, r.spec.kind_row
    if kind.own_scheduler:
        if req.scheduler is not None:
            r.error("scheduler", f"{kind.name} models use their own scheduler")
        r.params["scheduler"] = kind.scheduler
    elif req.scheduler is not None and req.scheduler not in spec.schedulers:
        r.error("scheduler", f"must be one of {spec.schedulers} for model {spec.name} ({spec.kind})")
    else:
        r.params["scheduler"] = req.scheduler or kind.scheduler


def img2img(r: Rules) -> None:
    req = r.req
    _sampling(r)
    r.sides()
    step = r.spec.kind_row.size_multiple
    image = r.images.get("image")
    if image is not None:
        width = req.width or image.width // step * step
        height = req.height or image.height // step * step
        if width < 64 or height < 64:
            r.error("image", "must be at least 64 pixels on each side, or give width and height")
        r.pixels(width, height)
        r.params["width"], r.params["height"] = width, height


def inpaint(r: Rules) -> None:
    """The mask: the image's aspect ratio, something to repaint (after `invert_mask`), or `expand` without
    one; the output (the image plus `expand`) within the pixel limit, and its size in `width`/`height`."""
    req = r.req
    _sampling(r)
    image, mask = r.images.get("image"), r.images.get("mask")
    grow = req.expand.model_dump() if req.expand else {"left": 0, "right": 0, "top": 0, "bottom": 0}
    expanding = any(grow.values())
    if req.mask is None and not expanding:
        r.error("mask", "is required (white = repaint), unless `expand` grows the canvas")
    if mask is not None and image is not None:
        if not masks.aspect_matches((mask.width, mask.height), (image.width, image.height)):
            r.error("mask", f"must have the image's aspect ratio (the image is {image.width}×{image.height}, "
                            f"the mask {mask.width}×{mask.height})")
        elif not expanding:
            with Image.open(io.BytesIO(mask.data)) as opened:
                if masks.is_empty(masks.read_mask(opened, req.invert_mask)):
                    r.error("mask", "is all black: nothing to repaint (white = repaint; with `invert_mask`, "
                                    "black = repaint)")
    if image is not None:
        width = image.width + grow["left"] + grow["right"]
        height = image.height + grow["top"] + grow["bottom"]
        if width * height > r.settings.max_pixels:
            r.error("expand" if expanding else "image", f"the output ({width}×{height}) must be at most "
                                                        f"{r.settings.max_pixels} pixels")
        if width < 64 or height < 64:
            r.error("image", "must be at least 64 pixels on each side (with `expand`)")
        r.params["width"], r.params["height"] = width, height
    r.params["expand"] = grow if expanding else None


def upscale(r: Rules) -> None:
    """The factor (the upscaler's own unless given) and the output within the pixel limit; tiles of 64 px
    or more (0: the whole image)."""
    req = r.req
    if 0 < req.tile < 64:
        r.error("tile", "must be 0 (the whole image at once) or at least 64")
    scale = req.scale if req.scale is not None else float(r.spec.scale)
    r.params["scale"] = scale
    image = r.images.get("image")
    if image is not None:
        width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
        if width * height > r.settings.max_pixels:
            r.error("scale", f"the output ({width}×{height}) must be at most {r.settings.max_pixels} pixels; "
                             f"the input is {image.width}×{image.height}")
        r.params["width"], r.params["height"] = width, height


def svd(r: Rules) -> None:
    req = r.req
    r.pixels(req.width, req.height)
    if req.min_guidance_scale > req.max_guidance_scale:
        r.error("min_guidance_scale", "must not exceed max_guidance_scale")
    max_frames = r.spec.num_frames or 14
    if req.num_frames is not None and req.num_frames > max_frames:
        r.error("num_frames", f"must be at most {max_frames} for model {r.spec.name}")
    r.params["num_frames"] = req.num_frames or max_frames


LEARNING_RATES = {"lora": 1e-4, "embedding": 5e-4, "lora+embedding": 1e-4}


def train(r: Rules) -> None:
    """A training job's defaults (the model's native side, the method's learning rate, the trigger from the
    name), and what only the catalogue knows: a server adapter's name is not to be shadowed. Whether the
    name is free for the key, and the key under its limit, are the route's to check (they need Redis)."""
    req, p = r.req, r.params
    embedding = req.method != "lora"
    if r.catalog.adapters.get(req.name) is not None:
        r.error("name", "is the name of one of this server's adapters; choose another")
    if req.init_token is not None and not embedding:
        r.error("init_token", "applies to the methods `embedding` and `lora+embedding` (a new token)")
    p["resolution"] = req.resolution or min(1024, max(256, (r.spec.defaults().get("width") or 512) // 64 * 64))
    p["learning_rate"] = req.learning_rate or LEARNING_RATES[req.method]
    p["alpha"] = req.alpha or float(req.rank)
    trigger = req.trigger or (f"<{req.name}>" if embedding else req.name)
    p["trigger"] = trigger
    if embedding:
        p["token"] = trigger
        if not (trigger.startswith("<") and trigger.endswith(">") and len(trigger) > 2):
            r.error("trigger", "an embedding's token is written in angle brackets, like <name>, so that it never "
                               "is an ordinary word of a prompt")
        elif any(trigger in a.token for a in r.catalog.adapters.values()):
            r.error("trigger", "is the token of one of this server's embeddings; choose another")
    first = next((item.caption for item in req.images if item.caption), "")
    p["validation"] = {**req.validation.model_dump(),
                       "prompt": req.validation.prompt or (f"{trigger}, {first}" if first else trigger)}
    size = sum(len(image.data) for image in r.images.values())
    if size > r.settings.max_train_bytes:
        r.error("images", f"the images come to {size} bytes; at most {r.settings.max_train_bytes} per dataset")


# ---- shared by the tasks whose rows say so


def loras(r: Rules) -> None:
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
        if ref.name is not None and ref.name not in r.catalog.adapters and ref.name in r.owned:
            mine = r.owned[ref.name]  # one the caller's key trained: by its file's digest
            if mine["kind"] != "lora":
                r.error(f"{at}.name", "is an embedding, not a LoRA: write its token in the prompt")
                continue
            if not adapter_registry.fits(mine, r.spec):
                r.error(f"{at}.name", f"was trained on a {mine['family']} model; model {r.spec.name} is "
                                      f"{r.spec.family}")
                continue
            scale = 1.0 if ref.scale is None else ref.scale
            key, entry = mine["digest"], {"name": ref.name, "scale": scale, "digest": mine["digest"], "owned": True}
        elif ref.name is not None:
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


def embeddings(r: Rules) -> None:
    """The embeddings the caller's key trained whose token the prompt (or negative prompt) holds: the
    worker loads them for this job (by their files' digests). Server embeddings are always loaded."""
    text = " ".join(filter(None, (getattr(r.req, "prompt", None), getattr(r.req, "negative_prompt", None))))
    used = [{"name": name, "token": rec["token"], "digest": rec["embedding_digest"]}
            for name, rec in sorted(r.owned.items())
            if rec.get("token") and rec.get("embedding_digest") and rec["token"] in text]
    for entry in used:
        rec = r.owned[entry["name"]]
        if not FAMILIES[r.spec.family].embeddings:
            r.error("prompt", f"names the token {rec['token']} of embedding {entry['name']}; model {r.spec.name} "
                              f"is {r.spec.family}, which takes no textual-inversion embeddings")
        elif not adapter_registry.fits(rec, r.spec):
            r.error("prompt", f"names the token {rec['token']} of embedding {entry['name']}, trained on a "
                              f"{rec['family']} model; model {r.spec.name} is {r.spec.family}")
    if used:
        r.params["embeddings"] = used


def control(r: Rules) -> None:
    """`control`: each a ControlNet that fits the model, start before end; the preprocessing defaults to
    what the ControlNet's kind needs. Each entry's `image` is the decoded input (resolve puts it there)."""
    out = []
    if r.req.control and not FAMILIES[r.spec.family].control:
        takes = sorted(f.name for f in FAMILIES.values() if f.control)
        r.error("control", f"model {r.spec.name} is {r.spec.family}, which takes no ControlNets (they are "
                           f"for {' and '.join(takes)} models)")
        r.params["control"] = []
        return
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
        if net is None or f"{at}.image" not in r.images:
            continue
        out.append({"model": ref.model, "kind": net.kind, "scale": ref.scale, "start": ref.start, "end": ref.end,
                    "preprocess": ref.preprocess or net.preprocess, "image": None})
    r.params["control"] = out


async def webhook(r: Rules) -> None:
    """`webhook`: a URL this server may post to (service/webhooks/targets.py); the filter only with it."""
    if r.req.webhook is None:
        if "webhook_events_filter" in r.req.model_fields_set:
            r.error("webhook_events_filter", "applies only with `webhook`")
        return
    problem = await targets.problem(r.req.webhook, r.settings)
    if problem:
        r.error("webhook", problem)
