"""The answer to an AUTOMATIC1111 txt2img/img2img call, built from its plan and its jobs' records.

`{"images": [base64 PNG], "parameters": {the request, echoed}, "info": "<JSON string>"}`. `info` holds what
A1111's `Processed.js()` holds (LibreChat reads `seed`, `width`, `height`, `infotexts`; webuiapi and Open
WebUI parse or keep it) plus Fresco's `warnings`; each `infotexts` entry is A1111's generation-parameters
text ("prompt\\nNegative prompt: …\\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, …"),
the text A1111 also writes into its PNGs.

An interrupted call answers as A1111 does: 200 with the images made before the interrupt (maybe none).
A job that failed makes the call fail with the job's error code.
"""

from __future__ import annotations

import base64
import json

from service import recipe
from service.api.compat.a1111.checkpoints import checkpoint
from service.api.compat.a1111.errors import JobFailed
from service.api.compat.a1111.translate import Plan
from service.catalog import Catalog
from service.jobs.states import JobStatus


def infotext(plan: Plan, seed: int, width: int, height: int, model_name: str, model_hash: str,
             extra: dict, version: str) -> str:
    """The image's infotext, with the A1111 names the request asked for (service/recipe.py builds it,
    as it does the text a worker writes into each PNG)."""
    return recipe.a1111_infotext(
        plan.prompt, plan.negative_prompt, steps=plan.steps, sampler=plan.sampler_name, schedule=plan.schedule,
        cfg_scale=plan.cfg_scale, seed=seed, width=width, height=height, model_hash=model_hash, model=model_name,
        denoising_strength=plan.denoising_strength if plan.mode == "img2img" or hires(plan) else None, extra=extra,
        version=version)


def hires(plan: Plan) -> bool:
    """Whether the call runs the hires fix (then "Denoising strength" is its second pass's)."""
    return bool(plan.bodies) and "hires" in plan.bodies[0]


def _json(h: dict, name: str, default):
    value = h.get(name)
    return json.loads(value) if value else default


def check_outcome(records: list[dict]) -> None:
    """JobFailed when a job failed (a canceled one is an interrupt: its images are just missing)."""
    for h in records:
        if h["status"] == JobStatus.FAILED:
            error = _json(h, "error", {}) or {}
            raise JobFailed(error.get("code", "internal"), error.get("message") or "the job failed")


def build(plan: Plan, catalog: Catalog, records: list[dict], images: list[list[bytes]], timestamp: str,
          version: str) -> dict:
    """The answer. `images[k]`: the files of job k (none for a canceled job)."""
    ckpt = checkpoint(catalog, plan.model)
    made = [h for h in records if h["status"] == JobStatus.SUCCEEDED]
    params = _json(made[0] if made else records[0], "params", {})  # the size and LoRAs the jobs ran with
    width = params.get("width") or plan.parameters["width"]
    height = params.get("height") or plan.parameters["height"]
    hashes = recipe.lora_hashes(params.get("loras"))
    # A1111's entries for the hires fix and inpainting, from what the jobs resolved (as the PNGs' infotext)
    inpaint = recipe.inpaint_entries(params) if plan.task == "inpaint" else {}
    spec = catalog.models[plan.model]  # FLUX.1's "Distilled CFG Scale", a T5 length not the model's own
    _, guidance = recipe.guidance_entries(spec.kind_row, params, spec.defaults().get("max_sequence_length"))
    extra = {k: v for k, v in {**guidance, **recipe.hires_entries(params.get("hires")), **inpaint,
                               "Lora hashes": hashes}.items() if v is not None}
    warnings = list(plan.warnings)
    for h in made:
        warnings += [w for w in _json(h, "warnings", []) if w not in warnings]
    seeds, b64 = [], []
    start = 0
    for body, h, files in zip(plan.bodies, records, images):
        if h["status"] == JobStatus.SUCCEEDED:
            seeds += plan.seeds[start:start + len(files)]
            b64 += [base64.b64encode(data).decode() for data in files]
        start += body["num_images"]
    if len(b64) < len(plan.seeds):
        warnings.append(f"interrupted: {len(b64)} of {len(plan.seeds)} images were made")
    texts = [infotext(plan, s, width, height, plan.model, ckpt.hash, extra, version) for s in seeds]
    total = len(plan.seeds)
    info = {
        "prompt": plan.prompt, "all_prompts": [plan.prompt] * total,
        "negative_prompt": plan.negative_prompt, "all_negative_prompts": [plan.negative_prompt] * total,
        "seed": plan.seeds[0], "all_seeds": plan.seeds, "subseed": plan.subseed, "all_subseeds": [plan.subseed] * total,
        "subseed_strength": 0, "width": width, "height": height, "sampler_name": plan.sampler_name,
        "scheduler": plan.schedule, "cfg_scale": plan.cfg_scale, "steps": plan.steps, "batch_size": plan.batch_size,
        "n_iter": plan.n_iter, "restore_faces": False, "face_restoration_model": None, "sd_model_name": plan.model,
        "sd_model_hash": ckpt.hash, "sd_vae_name": None, "sd_vae_hash": None, "seed_resize_from_w": -1,
        "seed_resize_from_h": -1, "denoising_strength": plan.denoising_strength, "extra_generation_params": extra,
        "index_of_first_image": 0, "infotexts": texts, "styles": [], "job_timestamp": timestamp, "clip_skip": 1,
        "is_using_inpainting_conditioning": bool(catalog.models[plan.model].inpainting), "version": version,
        "warnings": warnings,
    }
    parameters = {**plan.parameters, "width": plan.parameters["width"] or width,
                  "height": plan.parameters["height"] or height}
    return {"images": b64 if plan.send_images else [], "parameters": parameters, "info": json.dumps(info)}
