"""GET /models: each task's models, which are loaded on a live worker, defaults and limits."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import Caller
from service.api.errors import json_response
from service.api.requests import REQUESTS, takes_image
from service import adapter_registry
from service.api.schemas import MAX_LORAS, MAX_TRAIN_IMAGES, TRAIN_METHODS
from service.catalog import MAX_CONTROLS, PREPROCESSORS
from service.families import SCHEDULERS
from service.jobs.heartbeats import live_workers, serves
from service.redis import REDIS_DOWN
from service.tasks import TASKS

router = APIRouter()
TINY_NOTE = "the tiny profile runs random weights on the CPU: its images are noise by design"


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
async def models(caller: Caller):
    c = caller.ctx
    try:
        workers = await live_workers(c.redis, c.settings.heartbeat_ttl_s)
    except REDIS_DOWN:
        workers = []
    loaded = {pair for w in workers for pair in w.get("serves", [])}
    try:  # the adapters the caller's key trained, listed under the models they fit
        owned = await adapter_registry.records(c.redis, caller.owner)
    except REDIS_DOWN:
        owned = {}
    tasks = {}
    for task in TASKS.values():
        entries = []
        for name in c.catalog.models_for(task.name):
            spec = c.catalog.spec(name)
            facts = spec.facts()
            entry = {"name": name, "kind": spec.kind, "source": spec.source,
                     "loaded": serves(task.name, name) in loaded, "description": spec.description,
                     **{fact: facts[fact] for fact in task.model_facts}}
            if task.schedulers:  # those its kind takes (flow matching for sd3 and flux; none for Turbo)
                entry["schedulers"] = spec.schedulers
            if task.adapters:
                # LoRAs for `loras`, embeddings for the prompt: those that fit this model.
                entry["adapters"] = [a.listing() for a in c.catalog.adapters_for(name)] + [
                    adapter_registry.model_listing(rec) for _, rec in sorted(owned.items())
                    if adapter_registry.fits(rec, spec)]
            if task.control:
                entry["controlnets"] = [n.listing() for n in c.catalog.controlnets_for(name)]
            entries.append(entry)
        info = {"route": task.route, "default_model": c.catalog.default_for(task.name), "models": entries,
                "parameters": _parameters(REQUESTS[task.name])}
        if task.schedulers:  # every scheduler a request may name; each model's entry says which it takes
            info["schedulers"] = list(SCHEDULERS)
        info["limits"] = {"max_pixels": c.settings.max_pixels}
        if takes_image(task.name):
            info["limits"]["max_image_bytes"] = c.settings.max_image_bytes
        if task.adapters:
            info["limits"]["max_loras"] = MAX_LORAS
            info["limits"]["adapter_urls"] = c.settings.allow_adapter_urls
        if task.output == "adapter":
            info["limits"].update(max_images=MAX_TRAIN_IMAGES, max_image_bytes=c.settings.max_image_bytes,
                                  max_train_bytes=c.settings.max_train_bytes,
                                  max_adapters_per_key=c.settings.max_adapters_per_key)
            info["methods"] = list(TRAIN_METHODS)
        if task.control:
            info["limits"]["max_controls"] = MAX_CONTROLS
            info["preprocessors"] = list(PREPROCESSORS)
        tasks[task.name] = info
    return json_response({"profile": c.catalog.profile,
                          "note": TINY_NOTE if c.catalog.profile == "tiny" else None,
                          "tasks": tasks})
