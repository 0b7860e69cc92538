"""An output's recipe: what made it, in the two forms result files carry (workers/encode.py writes them,
docs/recipe.md says where in each format).

- AUTOMATIC1111's generation-parameters text ("infotext"), which "PNG Info" tools read (A1111's own
  png-info tab, sd-parsers, Civitai): the prompt, "Negative prompt: …", then one line of "Key: value"
  entries ("Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: …, Model: …").
  `a1111_infotext` is the one builder of that text; the A1111 adapter's answers use it with the names its
  request asked for (service/api/compat/a1111/answer.py), a worker through `native_infotext` with what a
  native job ran.
- Fresco's own JSON (`Recipe.data`): task, model (and where its weights came from: hub id and revision,
  a checkpoint file's digest, or "tiny"), this output's seed, every resolved parameter as the worker ran
  them (input images by name and size only, never their bytes; no webhook URL; adapter URLs without
  their query), the adapters with their digests, and the versions of Fresco, diffusers and torch.

Imported by the API and by workers: no torch, no diffusers, no FastAPI here. Versions are read from
the installed distributions' metadata.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import PurePosixPath

from service import lora_urls
from service.catalog.models import variant_of
from service.families import KINDS, Kind

RECIPE_VERSION = 1  # the JSON's "recipe" field: its layout, raised when a field changes meaning
PNG_PARAMETERS_KEY = "parameters"  # A1111's PNG text chunk
PNG_RECIPE_KEY = "fresco"  # Fresco's PNG text chunk
XMP_NAMESPACE = "urn:fresco:recipe:1/"  # the XMP property `fresco:recipe` (JPEG, WebP) holds the JSON


# ---- A1111's names for Fresco's schedulers (service.families.SCHEDULERS)


@dataclass(frozen=True)
class Sampler:
    """An A1111 sampler Fresco runs: its Fresco scheduler with the automatic (or uniform) schedule and,
    where Fresco has one, with the Karras schedule."""

    name: str
    aliases: tuple[str, ...]
    options: dict = field(default_factory=dict)  # as A1111 lists them (values are strings there)
    plain: str = "euler"  # the Fresco scheduler with the uniform schedule
    karras: str | None = None  # with the Karras schedule, where Fresco has it
    automatic: str = "uniform"  # the schedule "Automatic" means for this sampler (A1111's own default)
    flow: str | None = None  # the flow-matching scheduler it is on SD 3.5 and FLUX.1 (Forge: schedule "Simple")


# In A1111's order; `options` as its `/sdapi/v1/samplers` shows them. The A1111 adapter maps requests
# through it (service/api/compat/a1111/samplers.py), recipes map back.
SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", ("k_dpmpp_2m",), {"scheduler": "karras"}, "dpmpp_2m", "dpmpp_2m_karras", "karras"),
    Sampler("Euler a", ("k_euler_a", "k_euler_ancestral"), {"uses_ensd": "True"}, "euler_a"),
    Sampler("Euler", ("k_euler",), {}, "euler", flow="flow_euler"),
    Sampler("Heun", ("k_heun",), {"second_order": "True"}, "heun", flow="flow_heun"),
    Sampler("DDIM", ("ddim",), {}, "ddim"),
    Sampler("UniPC", ("unipc",), {}, "unipc"),
)


def a1111_sampler(scheduler: str | None) -> tuple[str, str] | None:
    """A1111's (sampler, schedule type) for a Fresco scheduler: what the A1111 adapter would run it as
    (`samplers.choose` of the pair gives the scheduler back). "turbo": Turbo's own Euler ancestral."""
    if scheduler is None:
        return None
    if scheduler == "turbo":
        return "Euler a", "Automatic"
    for s in SAMPLERS:
        if s.flow == scheduler:
            return s.name, FLOW_SCHEDULE
        if s.karras == scheduler:
            return s.name, "Karras"
        if s.plain == scheduler:
            # "Automatic" would mean Karras for a sampler whose default schedule is Karras.
            return s.name, "Automatic" if s.automatic == "uniform" else "Uniform"
    return None


FLOW_SCHEDULE = "Simple"  # the schedule type Forge runs flow-matching models with (sigmas evenly in time)


# ---- the infotext

DISTILLED_CFG = "Distilled CFG Scale"  # Forge's entry for FLUX.1's guidance embedding (then "CFG scale: 1")
SEQUENCE_LENGTH = "Max sequence length"  # the T5 prompt tokens, where not the model's default


def guidance_entries(kind: Kind | None, params: dict, sequence_default: int | None) -> tuple[float | None, dict]:
    """A job's "CFG scale" and the entries of its guidance and T5 prompt length: on a model whose guidance is a
    distilled embedding (FLUX.1), Forge's "CFG scale: 1" (no classifier-free guidance runs) and "Distilled CFG
    Scale"; a `max_sequence_length` other than the model's default (`sequence_default`)."""
    cfg, extra = params.get("guidance_scale"), {}
    if kind is not None and kind.distilled_guidance and cfg is not None:
        cfg, extra[DISTILLED_CFG] = 1.0, number(cfg)
    length = params.get("max_sequence_length")
    if length is not None and length != sequence_default:
        extra[SEQUENCE_LENGTH] = length
    return cfg, extra


def sequence_default(model: dict) -> int | None:
    """The T5 prompt tokens a recipe's model (name, kind, source, config) runs with unless asked: its variant's."""
    kind = KINDS.get(model.get("kind"))
    if kind is None or not kind.variants:
        return None
    config = model.get("config")
    return variant_of(kind, model.get("source", ""), config.get("source") if isinstance(config, dict) else None
                      ).max_sequence_length


def quote(value) -> str:
    """A1111's `infotext_utils.quote`: a value with a comma, colon or newline is written as a JSON string."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def number(value: float) -> str:
    """A number as A1111 writes it: 7 rather than 7.0."""
    return f"{value:g}" if value == int(value) else str(value)


def a1111_infotext(prompt: str, negative_prompt: str, *, steps: int | None, sampler: str | None,
                   schedule: str | None, cfg_scale: float | None, seed: int, width: int | None,
                   height: int | None, model_hash: str | None, model: str, denoising_strength: float | None = None,
                   extra: dict | None = None, version: str | None = None) -> str:
    """A1111's generation-parameters text, entries in A1111's order; an entry whose value is None is left out."""
    entries = {"Steps": steps, "Sampler": sampler, "Schedule type": schedule,
               "CFG scale": None if cfg_scale is None else number(cfg_scale), "Seed": seed,
               "Size": f"{width}x{height}" if width and height else None, "Model hash": model_hash, "Model": model}
    if denoising_strength is not None:
        entries["Denoising strength"] = number(denoising_strength)
    entries.update(extra or {})
    entries["Version"] = version
    text = ", ".join(f"{k}: {quote(v)}" for k, v in entries.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{text}".strip()


def short_hash(digest: str, chars: int) -> str:
    return digest.removeprefix("sha256:")[:chars]


def lora_hashes(loras: list[dict] | None) -> str | None:
    """A1111's "Lora hashes" entry: "name: <first 12 hex digits of the file's SHA-256>, …"."""
    entries = [f"{e['name']}: {short_hash(e['digest'], 12)}" for e in loras or [] if e.get("name") and e.get("digest")]
    return ", ".join(entries) or None


def checkpoint_sha256(name: str, source: str) -> str:
    """The SHA-256 the A1111 adapter lists a model under (`/sdapi/v1/sd-models`) when no file digest is
    at hand: of its models-file entry (name and source), stable while the entry stays the same."""
    return hashlib.sha256(f"fresco-model\0{name}\0{source}".encode()).hexdigest()


def model_hash(model: dict) -> str:
    """A1111's "Model hash" (10 hex digits): a checkpoint file's own SHA-256 (what A1111 and Civitai
    compute), else the models-file entry's (what the A1111 adapter lists)."""
    digest = model.get("digest")
    return short_hash(digest, 10) if digest else checkpoint_sha256(model["name"], model["source"])[:10]


def fresco_version() -> str:
    return versions()["fresco"] or "dev"


# A1111's names of the hires upscalers Fresco runs as A1111 does (any other is named as the models file does).
A1111_HIRES_UPSCALERS = {"latent": "Latent", "lanczos": "Lanczos"}


def hires_entries(hires: dict | None) -> dict:
    """A1111's hires fix entries for a job's resolved `hires` params (its "Size" stays the first pass's;
    "Denoising strength" is the hires pass's, written apart)."""
    if not hires:
        return {}
    return {"Hires upscale": number(hires["scale"]), "Hires steps": hires.get("steps"),
            "Hires upscaler": A1111_HIRES_UPSCALERS.get(hires["upscaler"], hires["upscaler"])}


# A1111's "Masked content" names of Fresco's `fill` values (its inpainting_fill 0 to 3).
A1111_FILLS = {"fill": "fill", "original": "original", "noise": "latent noise", "nothing": "latent nothing"}


def inpaint_entries(params: dict) -> dict:
    """A1111's inpainting entries (its img2img tab's "Inpaint" options) for an inpaint job's params."""
    out = {"Mask blur": params.get("mask_blur"), "Masked content": A1111_FILLS.get(params.get("fill"))}
    if params.get("mask_padding") is not None:
        out.update({"Inpaint area": "Only masked", "Masked area padding": params["mask_padding"]})
    if params.get("invert_mask"):
        out["Mask mode"] = "Inpaint not masked"
    return out


def native_infotext(task: str, model: dict, params: dict, seed: int, embeddings: list[dict] = ()) -> str:
    """The infotext of one output of a native job: `model` as `Recipe.model` describes it, `params` as the
    worker ran them, `seed` this output's. LoRAs named in the models file are written as A1111's
    `<lora:name:scale>` prompt tags (what A1111's own prompts hold, and Fresco's A1111 API reads)."""
    loras = params.get("loras") or []
    tags = "".join(f" <lora:{e['name']}:{number(float(e.get('scale', 1.0)))}>" for e in loras if e.get("name"))
    prompt = (params.get("prompt") or "") + tags
    kind = KINDS.get(model.get("kind"))
    scheduler = params.get("scheduler") or (kind.scheduler if kind is not None and kind.own_scheduler else None)
    sampler, schedule = (None, None) if task == "svd" else (a1111_sampler(scheduler) or (None, None))
    cfg, extra = guidance_entries(kind, params, sequence_default(model))
    hires = params.get("hires")
    extra.update(hires_entries(hires))
    if task == "inpaint":
        extra.update(inpaint_entries(params))
    if task == "sdxl" and params.get("refiner") and model.get("refiner"):
        extra["Refiner"] = PurePosixPath(model["refiner"]["source"].rstrip("/")).stem
        extra["Refiner switch at"] = number(params["refiner_switch"])
    for i, c in enumerate(params.get("control") or []):
        extra[f"ControlNet {i}"] = (f"Module: {c.get('preprocess')}, Model: {c.get('model')}, "
                                    f"Weight: {number(c.get('scale', 1.0))}, "
                                    f"Guidance Start: {number(c.get('start', 0.0))}, "
                                    f"Guidance End: {number(c.get('end', 1.0))}")
    hashes = lora_hashes(loras)
    if hashes:
        extra["Lora hashes"] = hashes
    ti = ", ".join(f"{e['name']}: {short_hash(e['digest'], 12)}" for e in embeddings if e.get("digest"))
    if ti:
        extra["TI hashes"] = ti
    if task == "upscale":  # A1111's "Extras" entries
        extra["Postprocess upscale by"] = number(params["scale"])
        extra["Postprocess upscaler"] = model["name"]
    if task == "svd":
        extra.update({"Frames": params.get("num_frames"), "FPS": params.get("fps"),
                      "Motion bucket id": params.get("motion_bucket_id"),
                      "Noise aug strength": params.get("noise_aug_strength"),
                      "Min guidance scale": params.get("min_guidance_scale"),
                      "Max guidance scale": params.get("max_guidance_scale")})
    return a1111_infotext(
        prompt, params.get("negative_prompt") or "", steps=params.get("steps"), sampler=sampler, schedule=schedule,
        cfg_scale=cfg, seed=None if task == "upscale" else seed,  # an upscale has none
        width=params.get("width"), height=params.get("height"),
        model_hash=model_hash(model), model=model["name"],
        denoising_strength=hires["strength"] if hires else
        params.get("strength") if task in ("img2img", "inpaint") else None,
        extra=extra,
        version=f"fresco {fresco_version()}")


# ---- Fresco's JSON


@lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    """The installed versions of Fresco, diffusers and torch (None where one is not installed: the API)."""
    out = {}
    for name in ("fresco", "diffusers", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _image_ref(value) -> dict | None:
    """An input image as a recipe shows it: its name and size, never its bytes or URL."""
    if not isinstance(value, dict):
        return None
    return {k: value[k] for k in ("name", "width", "height") if k in value}


def clean_params(params: dict) -> dict:
    """The job's resolved parameters as a recipe carries them (see the module's docstring)."""
    out = {k: v for k, v in params.items() if k not in ("webhook", "webhook_events_filter")
           and not isinstance(v, (bytes, bytearray))}
    if "image" in out:
        out["image"] = _image_ref(out["image"])
    if out.get("control"):
        out["control"] = [{**c, "image": _image_ref(c.get("image"))} for c in out["control"]]
    if out.get("loras"):
        out["loras"] = lora_urls.hide(out["loras"])  # no credentials, query or fragment (a token is there)
    return out


@dataclass(frozen=True)
class Recipe:
    """One job's recipe; `data(i)`, `json(i)` and `infotext(i)` are its output i's (image i has seed + i)."""

    task: str
    model: dict  # name, kind, source, and revision or digest, dtype; refiner and vae alike where set
    params: dict  # as the worker ran them (clean_params applies on the way out)
    embeddings: tuple[dict, ...] = ()  # {name, tokens, digest} of the embeddings the prompts used

    def seed(self, index: int = 0) -> int:
        return (int(self.params.get("seed", 0)) + index) % 2**32

    def data(self, index: int = 0) -> dict:
        params = clean_params(self.params)
        return {"recipe": RECIPE_VERSION, "task": self.task, "model": self.model, "seed": self.seed(index),
                "params": params,
                "adapters": {"loras": params.get("loras") or [], "embeddings": list(self.embeddings)},
                "versions": versions()}

    def json(self, index: int = 0, ascii_only: bool = False) -> str:
        return json.dumps(self.data(index), ensure_ascii=ascii_only, separators=(",", ":"))

    def infotext(self, index: int = 0) -> str:
        return native_infotext(self.task, self.model, self.params, self.seed(index), list(self.embeddings))
