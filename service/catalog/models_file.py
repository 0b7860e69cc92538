"""The catalogue: a models file (YAML or TOML) read and checked, or, with none, the built-in `tiny` profile.

A models file:

    models:
      sdxl-base-1.0:
        kind: sdxl                                          # sd | sdxl | turbo | svd
        source: stabilityai/stable-diffusion-xl-base-1.0    # a hub id, a local directory or one checkpoint file
        refiner: stabilityai/stable-diffusion-xl-refiner-1.0
        vae: madebyollin/sdxl-vae-fp16-fix
        preview_decoder: madebyollin/taesdxl                # optional: live previews by TAESDXL, not linear
        dtype: float16
        variant: fp16
      sdxl-turbo: {kind: turbo, source: stabilityai/sdxl-turbo}
      sd-1.5: {kind: sd, source: stable-diffusion-v1-5/stable-diffusion-v1-5, memory: minimal}
      pai-artist-zh:                                        # Chinese prompts; its weights are pickles
        kind: sd
        source: /models/pai-diffusion-artist-large-zh
        trust_pickle: true                                  # or convert it: fresco convert SRC DST
      my-finetune:                                          # one file in the original (A1111) layout
        kind: sdxl
        source: /models/my-finetune.safetensors
        config: /models/stable-diffusion-xl-base-1.0        # the diffusers-layout configs and tokenizers
      svd-xt: {kind: svd, source: stabilityai/stable-video-diffusion-img2vid-xt, num_frames: 25}
    defaults:                                               # optional: the first model of a fitting kind
      img2img: sdxl-base-1.0
    adapters:                                               # optional: LoRAs and embeddings requests may use
      pixel-art:
        kind: lora                                          # lora | embedding
        source: nerijs/pixel-art-xl                         # a hub id, a local .safetensors file or directory
        weight_name: pixel-art-xl.safetensors               # the file, where a repo or directory holds several
        base: sdxl                                          # model families, kinds or names it fits
        trigger: [pixel art]                                # optional: words that call up its style
        default_scale: 0.8
      unaestheticxl:
        kind: embedding
        source: /models/embeddings/unaestheticXLv31.safetensors
        base: sdxl
        token: <unaesthetic>                                # written in a prompt, it means the embedding
    controlnets:                                            # optional: ControlNets requests may use (`control`)
      canny-sdxl:
        kind: canny                                         # what its control image is (CONTROL_KINDS)
        source: diffusers/controlnet-canny-sdxl-1.0
        base: sdxl                                          # model families, kinds or names it fits
    upscalers:                                              # optional: the `upscale` task's (and hires's) models
      4x-ultrasharp:                                        # ESRGAN, Real-ESRGAN, SwinIR, HAT...: spandrel detects it
        source: /models/upscalers/4x-UltraSharp.safetensors # a .pth only with trust_pickle (or: fresco convert)
        scale: 4                                            # its factor (default 4; checked against the weights)

Every catalogue also has the upscaler `lanczos` (Pillow's filter, no weights). An upscaler is a model of
kind `upscaler` (GET /models lists it for `upscale`); a name is either a model's or an upscaler's.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, model_validator

from service.catalog.addons import AdapterSpec, ControlNetSpec, check_bases
from service.catalog.models import BUILTIN_UPSCALER, ModelSpec
from service.tasks import TASK_NAMES, TASKS


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelSpec]
    defaults: dict[str, str] = {}
    adapters: dict[str, AdapterSpec] = {}
    controlnets: dict[str, ControlNetSpec] = {}
    profile: str = "custom"

    @model_validator(mode="before")
    @classmethod
    def _names(cls, data):
        if isinstance(data, dict) and isinstance(data.get("models"), dict):
            data = dict(data)
            for section in ("models", "adapters", "controlnets"):
                if isinstance(data.get(section), dict):
                    data[section] = {name: ({"name": name, **spec} if isinstance(spec, dict) else spec)
                                     for name, spec in data[section].items()}
            data["models"] = {**data["models"], **_upscalers(data.pop("upscalers", None) or {}, data["models"])}
        return data

    @model_validator(mode="after")
    def _defaults(self):
        for task, name in self.defaults.items():
            if task not in TASKS:
                raise ValueError(f"defaults: unknown task {task!r}")
            if name not in self.models or task not in self.models[name].tasks:
                raise ValueError(f"defaults: model {name!r} cannot serve {task}")
        for task in TASK_NAMES:
            if task not in self.defaults:
                # a dedicated inpainting checkpoint first; a real upscaler before the built-in one
                names = sorted(self.models_for(task), key=lambda name: (not self.models[name].inpainting,
                                                                        name == BUILTIN_UPSCALER))
                if names:
                    self.defaults[task] = names[0]
        check_bases(self.adapters, self.controlnets, self.models)
        return self

    def models_for(self, task: str) -> list[str]:
        return [name for name, spec in self.models.items() if task in spec.tasks]

    def default_for(self, task: str) -> str | None:
        return self.defaults.get(task)

    def spec(self, name: str) -> ModelSpec:
        return self.models[name]

    def adapters_for(self, model: str, kind: str | None = None) -> list[AdapterSpec]:
        """The adapters that fit `model` (of `kind` when given), in models-file order."""
        spec = self.models[model]
        return [a for a in self.adapters.values() if a.fits(spec) and (kind is None or a.kind == kind)]

    def controlnets_for(self, model: str) -> list[ControlNetSpec]:
        """The ControlNets that fit `model`, in models-file order."""
        spec = self.models[model]
        return [c for c in self.controlnets.values() if c.fits(spec)]


def _upscalers(section: dict, models: dict) -> dict:
    """The `upscalers:` section as models of kind `upscaler`, then the built-in `lanczos` (unless named)."""
    if not isinstance(section, dict):
        raise ValueError("upscalers: a mapping of names to upscalers")
    out = {}
    for name, spec in section.items():
        if name in models:
            raise ValueError(f"upscalers: {name!r} is also a model's name")
        if not isinstance(spec, dict):
            raise ValueError(f"upscalers: {name!r} is a mapping with a `source`")
        out[name] = {"name": name, "kind": "upscaler", **spec}
    if BUILTIN_UPSCALER not in out and BUILTIN_UPSCALER not in models:
        out[BUILTIN_UPSCALER] = {"name": BUILTIN_UPSCALER, "kind": "upscaler", "source": BUILTIN_UPSCALER,
                                 "description": "Pillow's Lanczos filter: no weights, any factor"}
    return out


def tiny_catalog() -> Catalog:
    note = "tiny profile: random weights, CPU; its images are noise by design"
    return Catalog(
        profile="tiny",
        models={
            "tiny-sdxl": {"kind": "sdxl", "source": "tiny", "refiner": "tiny", "description": note},
            "tiny-turbo": {"kind": "turbo", "source": "tiny", "description": note},
            "tiny-svd": {"kind": "svd", "source": "tiny", "num_frames": 14, "description": note},
            "tiny-sd": {"kind": "sd", "source": "tiny", "description": note + " (SD 1.x family)"},
            "tiny-pai": {"kind": "sd", "source": "tiny:pai",
                         "description": note + " (PAI-Diffusion style: Chinese prompts, BERT tokenizer)"},
            "tiny-sd-inpaint": {"kind": "sd", "source": "tiny:inpaint",
                                "description": note + " (an SD 1.x inpainting checkpoint: a 9-channel UNet)"},
            "tiny-sd3": {"kind": "sd3", "source": "tiny",
                         "description": note + " (SD 3.5 family: MMDiT transformer, CLIP-L, bigG and T5)"},
            "tiny-flux": {"kind": "flux", "source": "tiny",
                          "description": note + " (FLUX.1-dev family: guidance-embedded transformer, CLIP-L, T5)"},
            "tiny-flux-schnell": {"kind": "flux", "source": "tiny:schnell",
                                  "description": note + " (FLUX.1-schnell family: no guidance embedding)"},
        },
        upscalers={
            "tiny-esrgan": {"source": "tiny", "scale": 2,
                            "description": "tiny profile: a small random ESRGAN (RRDBNet) that spandrel detects"},
        },
        defaults={"txt2img": "tiny-sd", "train": "tiny-sd"},
        # Built offline from fixed seeds (workers/tiny_adapters.py ADAPTERS), so the tour shows the feature.
        adapters={
            "tiny-style": {"kind": "lora", "source": "tiny", "base": "sdxl", "trigger": ["tiny style"],
                           "description": "tiny profile: a random LoRA (diffusers/PEFT layout)"},
            "tiny-sketch": {"kind": "lora", "source": "tiny", "base": "sdxl", "default_scale": 0.8,
                            "description": "tiny profile: a random LoRA (kohya layout)"},
            "tiny-cat": {"kind": "embedding", "source": "tiny", "base": "sdxl", "token": ["<tiny-cat>"],
                         "description": "tiny profile: a random textual-inversion embedding"},
            "tiny-sd3-style": {"kind": "lora", "source": "tiny", "base": "sd3",
                               "description": "tiny profile: a random SD 3 LoRA (diffusers/PEFT layout)"},
            "tiny-flux-style": {"kind": "lora", "source": "tiny", "base": "flux",
                                "description": "tiny profile: a random FLUX.1 LoRA (kohya layout, BFL names)"},
        },
        controlnets={
            "tiny-canny": {"kind": "canny", "source": "tiny", "base": "sdxl",
                           "description": "tiny profile: a random canny ControlNet for SDXL"},
            "tiny-sd-canny": {"kind": "canny", "source": "tiny", "base": "sd",
                              "description": "tiny profile: a random canny ControlNet for SD 1.x"},
            "tiny-sd-depth": {"kind": "depth", "source": "tiny", "base": "sd",
                              "description": "tiny profile: a random depth ControlNet for SD 1.x (give a depth map)"},
        },
    )


def load_catalog(path: Path | None) -> Catalog:
    """The models file at `path` (YAML or TOML), or the `tiny` profile when there is none."""
    if path is None or str(path) in ("", "tiny"):
        return tiny_catalog()
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".toml":
        data = tomllib.loads(text)
    else:
        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a models file is a mapping with a `models` key")
    base = path.parent
    for section, fields in (("models", ("source", "config", "refiner", "vae")), ("adapters", ("source",)),
                            ("controlnets", ("source",)), ("upscalers", ("source",))):
        for spec in (data.get(section) or {}).values():
            # Relative local paths are relative to the models file.
            for key in fields:
                value = spec.get(key) if isinstance(spec, dict) else None
                if isinstance(value, str) and value != "tiny" and not value.startswith("tiny:") and \
                        (value.startswith(".") or (base / value).exists()):
                    spec[key] = str((base / value).resolve())
    return Catalog.model_validate(data)
