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

from service.api.compat.a1111.checkpoints import checkpoint
from service.api.compat.a1111.errors import JobFailed
from service.api.compat.a1111.translate import Plan
from service.catalog import Catalog
from service.jobs.states import JobStatus


def _quote(value) -> str:
    """A1111's `infotext_utils.quote`: a value with a comma, colon or newline is written as a JSON string."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def _number(value: float) -> str:
    return f"{value:g}" if value == int(value) else str(value)


def infotext(plan: Plan, seed: int, width: int, height: int, model_name: str, model_hash: str,
             extra: dict, version: str) -> str:
    params = {"Steps": plan.steps, "Sampler": plan.sampler_name, "Schedule type": plan.schedule,
              "CFG scale": _number(plan.cfg_scale), "Seed": seed, "Size": f"{width}x{height}",
              "Model hash": model_hash, "Model": model_name}
    if plan.mode == "img2img" and plan.denoising_strength is not None:
        params["Denoising strength"] = _number(plan.denoising_strength)
    params.update(extra)
    params["Version"] = version
    text = ", ".join(f"{k}: {_quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {plan.negative_prompt}" if plan.negative_prompt else ""
    return f"{plan.prompt}{negative}\n{text}".strip()


def _json(h: dict, name: str, default):
    value = h.get(name)
    return json.loads(value) if value else default


def check_outcome(records: list[dict]) -> None:
    """JobFailed when a job failed (a canceled one is an interrupt: its images are just missing)."""
    for h in records:
        if h["status"] == JobStatus.FAILED:
            error = _json(h, "error", {}) or {}
            raise JobFailed(error.get("code", "internal"), error.get("message") or "the job failed")


def _lora_hashes(params: dict) -> str | None:
    """A1111's "Lora hashes" entry: "name: <first 12 hex digits of the file's SHA-256>, …"."""
    entries = [f"{e['name']}: {e['digest'].removeprefix('sha256:')[:12]}" for e in params.get("loras") or []
               if e.get("name") and e.get("digest")]
    return ", ".join(entries) or None


def build(plan: Plan, catalog: Catalog, records: list[dict], images: list[list[bytes]], timestamp: str,
          version: str) -> dict:
    """The answer. `images[k]`: the files of job k (none for a canceled job)."""
    ckpt = checkpoint(catalog, plan.model)
    made = [h for h in records if h["status"] == JobStatus.SUCCEEDED]
    params = _json(made[0] if made else records[0], "params", {})  # the size and LoRAs the jobs ran with
    width = params.get("width") or plan.parameters["width"]
    height = params.get("height") or plan.parameters["height"]
    hashes = _lora_hashes(params)
    extra = {"Lora hashes": hashes} if hashes else {}
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
        "is_using_inpainting_conditioning": False, "version": version, "warnings": warnings,
    }
    parameters = {**plan.parameters, "width": plan.parameters["width"] or width,
                  "height": plan.parameters["height"] or height}
    return {"images": b64 if plan.send_images else [], "parameters": parameters, "info": json.dumps(info)}
