"""The model catalogue: which models serve which task, where their weights come from, how to load them.

Read by the API (validation, `GET /models`) and by workers (what to load), so it is declarative and
imports no torch. It comes from a models file (YAML or TOML) or, with none, the built-in `tiny` profile.

A models file:

    models:
      sdxl-base-1.0:
        kind: sdxl                                          # sdxl | turbo | svd
        source: stabilityai/stable-diffusion-xl-base-1.0    # a hub id or a local directory
        refiner: stabilityai/stable-diffusion-xl-refiner-1.0
        vae: madebyollin/sdxl-vae-fp16-fix
        dtype: float16
        variant: fp16
      sdxl-turbo: {kind: turbo, source: stabilityai/sdxl-turbo}
      svd-xt: {kind: svd, source: stabilityai/stable-video-diffusion-img2vid-xt, num_frames: 25}
    defaults:                                               # optional: the first model of a fitting kind
      img2img: sdxl-base-1.0
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.tasks import TASK_NAMES, TASKS, tasks_for_kind

Kind = Literal["sdxl", "turbo", "svd"]  # which kinds serve which task: the task table (service/tasks.py)

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
    source: str  # hub id, local directory, or "tiny"
    refiner: str | None = None  # sdxl only: hub id, local directory, or "tiny"
    vae: str | None = None  # a VAE override, e.g. the fp16-fix VAE
    variant: str | None = None  # e.g. "fp16" weights files
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: fp16 on CUDA, fp32 on CPU
    device: str = "auto"  # auto: cuda when available, else cpu
    cpu_offload: bool = False  # enable_model_cpu_offload, for small GPUs
    vae_tiling: bool = False
    vae_slicing: bool = False
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

    @model_validator(mode="after")
    def _check(self):
        if self.refiner and self.kind != "sdxl":
            raise ValueError(f"model {self.name}: only sdxl models take a refiner")
        if self.kind == "svd" and self.num_frames is None:
            name = self.source.rstrip("/").rsplit("/", 1)[-1].lower()
            self.num_frames = 25 if name.endswith("-xt") or "-xt-" in name else 14
        return self

    @property
    def is_tiny(self) -> bool:
        return self.source == "tiny"

    @property
    def tasks(self) -> list[str]:
        return tasks_for_kind(self.kind)

    def facts(self) -> dict:
        """What `GET /models` may show about the model, by name (each task row picks its own)."""
        return {"refiner": bool(self.refiner), "max_num_frames": self.num_frames}


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelSpec]
    defaults: dict[str, str] = {}
    profile: str = "custom"

    @model_validator(mode="before")
    @classmethod
    def _names(cls, data):
        if isinstance(data, dict) and isinstance(data.get("models"), dict):
            data = dict(data)
            data["models"] = {
                name: ({"name": name, **spec} if isinstance(spec, dict) else spec)
                for name, spec in data["models"].items()
            }
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
        return self

    def models_for(self, task: str) -> list[str]:
        return [name for name, spec in self.models.items() if task in spec.tasks]

    def default_for(self, task: str) -> str | None:
        return self.defaults.get(task)

    def spec(self, name: str) -> ModelSpec:
        return self.models[name]


def tiny_catalog() -> Catalog:
    note = "tiny profile: random weights, CPU; its images are noise by design"
    return Catalog(
        profile="tiny",
        models={
            "tiny-sdxl": {"kind": "sdxl", "source": "tiny", "refiner": "tiny", "description": note},
            "tiny-turbo": {"kind": "turbo", "source": "tiny", "description": note},
            "tiny-svd": {"kind": "svd", "source": "tiny", "num_frames": 14, "description": note},
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
    for spec in (data.get("models") or {}).values():
        # Relative local directories are relative to the models file.
        for key in ("source", "refiner", "vae"):
            value = spec.get(key) if isinstance(spec, dict) else None
            if isinstance(value, str) and value != "tiny" and (value.startswith(".") or (base / value).is_dir()):
                spec[key] = str((base / value).resolve())
    return Catalog.model_validate(data)
