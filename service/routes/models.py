"""GET /models: each task's models, which are loaded on a live worker, defaults and limits."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.catalog import SCHEDULERS, TASKS
from service.heartbeats import live_workers
from service.jobstore import serves
from service.queue import REDIS_DOWN
from service.routes.common import ctx, json_response
from service.schemas import Img2ImgRequest, SDXLRequest, SVDRequest, TurboRequest

router = APIRouter()
REQUESTS = {"sdxl": SDXLRequest, "turbo": TurboRequest, "img2img": Img2ImgRequest, "svd": SVDRequest}


def _parameters(model_cls) -> dict:
    """Each request field's default and limits, as JSON Schema keywords."""
    keep = ("default", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "enum",
            "minLength", "maxLength")
    out = {}
    for name, prop in model_cls.model_json_schema()["properties"].items():
        if name in ("task", "model"):
            continue
        merged = dict(prop)
        for alt in prop.get("anyOf", []):
            merged.update({k: v for k, v in alt.items() if k != "type"})
        out[name] = {k: merged[k] for k in keep if k in merged}
    return out


@router.get("/models")
async def models(request: Request):
    c = ctx(request)
    c.owner(request)
    try:
        workers = await live_workers(c.redis, c.settings.heartbeat_ttl_s)
    except REDIS_DOWN:
        workers = []
    loaded = {pair for w in workers for pair in w.get("serves", [])}
    tasks = {}
    for task in TASKS:
        entries = []
        for name in c.catalog.models_for(task):
            spec = c.catalog.spec(name)
            entry = {"name": name, "kind": spec.kind, "source": spec.source, "loaded": serves(task, name) in loaded,
                     "description": spec.description}
            if task == "sdxl":
                entry["refiner"] = bool(spec.refiner)
            if task == "svd":
                entry["max_num_frames"] = spec.num_frames
            entries.append(entry)
        info = {"default_model": c.catalog.default_for(task), "models": entries,
                "parameters": _parameters(REQUESTS[task])}
        if task in ("sdxl", "img2img"):
            info["schedulers"] = list(SCHEDULERS)
        info["limits"] = {"max_pixels": c.settings.max_pixels}
        if task in ("img2img", "svd"):
            info["limits"]["max_image_bytes"] = c.settings.max_image_bytes
        tasks[task] = info
    return json_response({"profile": c.catalog.profile,
                          "note": ("the tiny profile runs random weights on the CPU: its images are noise by design"
                                   if c.catalog.profile == "tiny" else None),
                          "tasks": tasks})
