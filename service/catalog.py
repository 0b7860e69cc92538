"""The model catalogue: which models serve which task, where their weights come from, how to load them.

Read by the API (validation, `GET /models`) and by workers (what to load), so it is declarative and
imports no torch. It comes from a models file (YAML or TOML) or, with none, the built-in `tiny` profile.

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
"""

from __future__ import annotations

import json
import tomllib
from urllib.parse import urlsplit
from pathlib import Path, PurePosixPath
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.tasks import TASK_NAMES, TASKS, tasks_for_kind

Kind = Literal["sd", "sdxl", "turbo", "svd"]  # which kinds serve which task: the task table (service/tasks.py)
# Model kinds of one architecture: an adapter or ControlNet made for the family fits each of them (Turbo
# is SDXL-shaped; `sd` is SD 1.x and 2.x, whose UNets differ only in width and attention heads).
FAMILIES: dict[str, tuple[str, ...]] = {"sd": ("sd",), "sdxl": ("sdxl", "turbo"), "svd": ("svd",)}
FAMILY_OF: dict[str, str] = {kind: family for family, kinds in FAMILIES.items() for kind in kinds}
# A kind's defaults for the image tasks: the native size (a model's own, where its files say otherwise:
# an SD 2.x 768-v model) and the classifier-free guidance its models were tuned around (Turbo: none).
KIND_DEFAULTS: dict[str, dict] = {"sd": {"size": 512, "guidance_scale": 7.5},
                                  "sdxl": {"size": 1024, "guidance_scale": 5.0},
                                  "turbo": {"size": 512, "guidance_scale": 0.0}}
# What a ControlNet's control image is; `canny` maps are made on the worker from any image
# (`preprocess: canny`), the others are given ready-made (`preprocess: none`).
CONTROL_KINDS = ("canny", "depth", "normal", "openpose", "lineart", "softedge", "scribble", "mlsd", "seg",
                 "tile", "other")
PREPROCESSORS = ("none", "canny")
CONTROL_SCALE = (0.0, 2.0)
MAX_CONTROLS = 2
LORA_SCALE = (-2.0, 2.0)  # the scale a request may give a LoRA (the contract's limits)
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")  # unpickling runs code: loaded only when trusted
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")  # a single-file checkpoint
PICKLE_HINT = "pickled weights can run code when loaded"


def adapter_url_problem(url: str, schemes: list[str]) -> str | None:
    """Why an adapter URL is refused before anything is fetched (None: fetch it, the worker checks the
    bytes are safetensors). The message never quotes the URL."""
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        return f"must be an URL with scheme {' or '.join(schemes)}"
    if parts.username or parts.password:
        return "must not carry credentials"
    if PurePosixPath(parts.path).suffix.lower() in PICKLE_SUFFIXES:
        return "names a pickle file, which can run code when loaded; give a .safetensors file"
    return None

# Schedulers a request may name (sdxl, and img2img on an sdxl model): name -> (diffusers class, options).
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
}
# Turbo's own: Euler ancestral with trailing timestep spacing.
TURBO_SCHEDULER = ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"})


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Kind
    source: str  # hub id, local directory, a single-file checkpoint, or "tiny" ("tiny:pai": the Chinese one)
    # A single-file checkpoint's diffusers-layout twin (hub id or local directory): its component configs
    # and tokenizers, which the file does not hold (nothing is fetched for it at run time).
    config: str | None = None
    # Load pickled weights (`.bin`, `.ckpt`): unpickling runs code, so only for a source you trust.
    trust_pickle: bool = False
    refiner: str | None = None  # sdxl only: hub id, local directory, or "tiny"
    vae: str | None = None  # a VAE override, e.g. the fp16-fix VAE
    # Live previews (workers/previews.py): a tiny autoencoder that decodes them (TAESD for sd and svd,
    # TAESDXL for sdxl and turbo: madebyollin/taesd, madebyollin/taesdxl, or a local directory). None: a
    # linear latent-to-RGB projection, no extra model.
    preview_decoder: str | None = None
    variant: str | None = None  # e.g. "fp16" weights files
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: fp16 on CUDA, fp32 on CPU
    device: str = "auto"  # auto: cuda when available, else cpu
    # GPU memory (workers/memory.py): everything resident (default); `balanced`: each module on the GPU
    # only while it runs (model CPU offload); `minimal`: group offloading layer by layer with CUDA streams,
    # VAE tiling and slicing, for GPUs of a few GB. Same images, slower.
    memory: Literal["default", "balanced", "minimal"] = "default"
    cpu_offload: bool = False  # the older spelling of `memory: balanced` (read into `memory` only)
    vae_tiling: bool = False
    vae_slicing: bool = False
    # The native (width, height) of txt2img; default: the model's own (its UNet's sample size, read from
    # a local directory) or its family's (512 for SD, 1024 for SDXL). An SD 2.x 768-v model: 768.
    size: tuple[int, int] | None = None
    num_frames: int | None = Field(None, ge=1, le=128)  # svd: the frames the model was trained for
    description: str = ""
    # The GPU path (workers/models.py, BENCHMARKS.md): each option is off unless the models file turns it on.
    channels_last: bool = False  # UNet and VAE convolutions in channels-last memory format
    fuse_qkv: bool = False  # fused Q/K/V (and K/V) projections in the UNet's and VAE's attention
    compile: bool = False  # regional torch.compile of the UNet's repeated transformer blocks
    compile_mode: str | None = None  # torch.compile mode, e.g. "max-autotune-no-cudagraphs"
    compile_backend: str = "inductor"  # "eager"/"aot_eager" trace without generating code (tests)
    # (width, height) sizes warmed at worker start (with compile: compiled then, so no request pays it;
    # a request of another size then runs eagerly, never compiling). Empty: each task's default size.
    buckets: list[tuple[int, int]] = []
    # With compile: LoRAs hot-swap into `lora_slots` slots of rank `lora_rank` (the highest rank served).
    # Every slot runs in every job, so each costs compute: keep both as small as the LoRAs allow.
    lora_rank: int = Field(64, ge=1, le=1024)
    lora_slots: int = Field(2, ge=1, le=5)
    # Without compile, LoRAs merge into the UNet's weights; the layers' own weights are kept aside to be
    # written back exactly: on the model's device (a switch costs a copy on the GPU, and memory: the
    # layers LoRAs train, once) or in CPU memory (no GPU memory; a switch copies them over the bus).
    lora_backup: Literal["device", "cpu"] = "device"

    @field_validator("size", mode="before")
    @classmethod
    def _square(cls, v):
        return (v, v) if isinstance(v, int) else v

    @model_validator(mode="after")
    def _check(self):
        if self.refiner and self.kind != "sdxl":
            raise ValueError(f"model {self.name}: only sdxl models take a refiner")
        if self.kind == "svd" and self.num_frames is None:
            name = self.source.rstrip("/").rsplit("/", 1)[-1].lower()
            self.num_frames = 25 if name.endswith("-xt") or "-xt-" in name else 14
        if self.cpu_offload and self.memory == "default":
            self.memory = "balanced"
        if self.memory == "minimal" and self.compile:
            raise ValueError(f"model {self.name}: `memory: minimal` offloads layer by layer, which `compile` "
                             f"cannot trace through; use `memory: balanced` with compile")
        if self.is_tiny and self.source not in TINY_SOURCES.get(self.kind, ()):
            raise ValueError(f"model {self.name}: tiny sources of kind {self.kind} are {TINY_SOURCES.get(self.kind)}")
        if self.single_file:
            if self.kind not in ("sd", "sdxl", "turbo"):
                raise ValueError(f"model {self.name}: single-file checkpoints are for sd, sdxl and turbo models")
            if not self.config:
                raise ValueError(f"model {self.name}: a single-file checkpoint needs `config`, the diffusers-layout "
                                 f"directory or hub id of its architecture (configs and tokenizers), since "
                                 f"nothing is fetched at run time")
            if Path(self.source).suffix.lower() in PICKLE_SUFFIXES and not self.trust_pickle:
                raise ValueError(f"model {self.name}: {Path(self.source).name} is a pickle ({PICKLE_HINT}); set "
                                 f"`trust_pickle: true` for it if you trust its publisher, or give a .safetensors file")
        if self.size is None:
            self.size = native_size(self) if self.kind in KIND_DEFAULTS else None
        return self

    @property
    def is_tiny(self) -> bool:
        return self.source == "tiny" or self.source.startswith("tiny:")

    @property
    def single_file(self) -> bool:
        """A checkpoint in one file (A1111 / CompVis layout), loaded with `from_single_file`."""
        return not self.is_tiny and Path(self.source).suffix.lower() in CHECKPOINT_SUFFIXES

    @property
    def family(self) -> str:
        return FAMILY_OF[self.kind]

    @property
    def tasks(self) -> list[str]:
        return tasks_for_kind(self.kind)

    def defaults(self) -> dict:
        """The image defaults of this model: its native size and its kind's guidance."""
        if self.size is None:
            return {}
        return {"width": self.size[0], "height": self.size[1],
                "guidance_scale": KIND_DEFAULTS[self.kind]["guidance_scale"]}

    def facts(self) -> dict:
        """What `GET /models` may show about the model, by name (each task row picks its own)."""
        return {"refiner": bool(self.refiner), "max_num_frames": self.num_frames, "defaults": self.defaults(),
                "family": self.family}


# The tiny profile's sources per kind ("tiny:pai": an SD model with PAI-Diffusion's Chinese tokenizer).
TINY_SOURCES = {"sd": ("tiny", "tiny:pai"), "sdxl": ("tiny",), "turbo": ("tiny",), "svd": ("tiny",)}


def native_size(spec: "ModelSpec") -> tuple[int, int]:
    """A model's native size: its UNet's `sample_size` times its VAE's scale, read from a local diffusers
    directory (an SD 2.x 768-v model says 96 × 8), else its family's."""
    folder = Path(spec.config or spec.source)
    size = KIND_DEFAULTS[spec.kind]["size"]
    if not spec.is_tiny and folder.is_dir():
        try:
            unet = json.loads((folder / "unet" / "config.json").read_text())
            vae = json.loads((folder / "vae" / "config.json").read_text())
            sample = unet["sample_size"]
            size = (sample if isinstance(sample, int) else sample[0]) * 2 ** (len(vae["block_out_channels"]) - 1)
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass
    return size, size


class _FitsModels(BaseModel):
    """An add-on (adapter, ControlNet) made for some models: `base` names model families, kinds or models."""

    model_config = ConfigDict(extra="forbid")

    base: list[str]
    source: str  # hub id, local file or directory, or "tiny"

    @field_validator("base", mode="before")
    @classmethod
    def _base_listed(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("base")
    @classmethod
    def _base_given(cls, v):
        if not v:
            raise ValueError("names the model families, kinds or models it fits; give at least one")
        return v

    @property
    def is_tiny(self) -> bool:
        return self.source == "tiny"

    def fits(self, model: ModelSpec) -> bool:
        return any(b == model.name or b == model.kind or model.kind in FAMILIES.get(b, ()) for b in self.base)


class AdapterSpec(_FitsModels):
    """A LoRA or a textual-inversion embedding, by name, with the models it fits."""

    name: str
    kind: Literal["lora", "embedding"]
    weight_name: str | None = None  # the file inside a hub repo or directory
    token: list[str] = []  # embeddings: the prompt token(s) that mean it
    trigger: list[str] = []  # LoRAs: words that call up the style (shown, never added to a prompt)
    default_scale: float = Field(1.0, ge=LORA_SCALE[0], le=LORA_SCALE[1], allow_inf_nan=False)
    description: str = ""

    @field_validator("token", "trigger", mode="before")
    @classmethod
    def _listed(cls, v):
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self):
        if self.kind == "embedding" and not self.token:
            raise ValueError(f"adapter {self.name}: an embedding needs its `token`")
        if self.kind == "lora" and self.token:
            raise ValueError(f"adapter {self.name}: `token` is for embeddings; a LoRA may name `trigger` words")
        path = self.weight_name or self.source
        if not self.is_tiny and Path(path).suffix.lower() in PICKLE_SUFFIXES:
            raise ValueError(f"adapter {self.name}: {Path(path).suffix} files are pickles, which can run code when "
                             f"loaded; Fresco loads adapters from .safetensors files only")
        return self

    def fits(self, model: ModelSpec) -> bool:
        # `memory: minimal` hooks each layer of the model at load: layers an adapter adds later would
        # never reach the device. Such a model takes no adapters.
        return model.memory != "minimal" and super().fits(model)

    def listing(self) -> dict:
        """How `GET /models` shows it, under each model it fits."""
        out: dict = {"name": self.name, "kind": self.kind, "description": self.description}
        if self.kind == "embedding":
            out["tokens"] = self.token
        else:
            out["triggers"] = self.trigger
            out["scale"] = {"default": self.default_scale, "minimum": LORA_SCALE[0], "maximum": LORA_SCALE[1]}
        return out


class ControlNetSpec(_FitsModels):
    """A ControlNet, by name: what its control image is (`kind`), the models it fits (`base`)."""

    name: str
    kind: Literal[CONTROL_KINDS]  # type: ignore[valid-type]
    variant: str | None = None
    trust_pickle: bool = False  # load pickled (.bin) weights: only for a source you trust
    description: str = ""

    @property
    def preprocess(self) -> str:
        """What a request's control image goes through by default: a canny ControlNet takes any image."""
        return "canny" if self.kind == "canny" else "none"

    def listing(self) -> dict:
        return {"name": self.name, "kind": self.kind, "preprocess": self.preprocess,
                "description": self.description}


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
                names = self.models_for(task)
                if names:
                    self.defaults[task] = names[0]
        known = set(self.models) | set(FAMILIES) | set(get_args(Kind))
        for what, addon in [("adapter", a) for a in self.adapters.values()] + \
                [("controlnet", c) for c in self.controlnets.values()]:
            unknown = [b for b in addon.base if b not in known]
            if unknown:
                raise ValueError(f"{what} {addon.name}: base {unknown} is no model, kind or family "
                                 f"({sorted(FAMILIES)} or a model name)")
        for adapter in self.adapters.values():
            if adapter.kind == "embedding":
                taken = [t for other in self.adapters.values() if other is not adapter for t in other.token
                         if t in adapter.token]
                if taken:
                    raise ValueError(f"adapter {adapter.name}: token {taken} is another embedding's too")
        for net in self.controlnets.values():
            if any(m.family == "svd" for m in self.models.values() if net.fits(m)):
                raise ValueError(f"controlnet {net.name}: ControlNets are for sd and sdxl models")
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
        },
        defaults={"txt2img": "tiny-sd"},
        # Built offline from fixed seeds (workers/tiny.py ADAPTERS), so the tour shows the feature.
        adapters={
            "tiny-style": {"kind": "lora", "source": "tiny", "base": "sdxl", "trigger": ["tiny style"],
                           "description": "tiny profile: a random LoRA (diffusers/PEFT layout)"},
            "tiny-sketch": {"kind": "lora", "source": "tiny", "base": "sdxl", "default_scale": 0.8,
                            "description": "tiny profile: a random LoRA (kohya layout)"},
            "tiny-cat": {"kind": "embedding", "source": "tiny", "base": "sdxl", "token": ["<tiny-cat>"],
                         "description": "tiny profile: a random textual-inversion embedding"},
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
                            ("controlnets", ("source",))):
        for spec in (data.get(section) or {}).values():
            # Relative local paths are relative to the models file.
            for key in fields:
                value = spec.get(key) if isinstance(spec, dict) else None
                if isinstance(value, str) and value != "tiny" and not value.startswith("tiny:") and \
                        (value.startswith(".") or (base / value).exists()):
                    spec[key] = str((base / value).resolve())
    return Catalog.model_validate(data)
