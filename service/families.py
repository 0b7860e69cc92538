"""The family table, API side: every model kind Fresco serves and what the API needs to know of it.

A **kind** is what a models-file entry says it is (`kind: sdxl`); a **family** is the architecture its
weights have: an adapter or a ControlNet made for a family fits every kind of it (Turbo is SDXL-shaped;
`sd` is SD 1.x and 2.x, whose UNets differ only in width and attention heads). A row names the tasks a
kind serves, its defaults (native size, guidance, scheduler), the schedulers a request may pick, the
task a compatible API's text-to-image runs on it, and its tiny-profile sources; a family row says
whether LoRAs, embeddings and ControlNets load into its models.

What a worker needs of a family (diffusers classes per mode, the denoiser, text encoders, preview
factors, compile blocks, the tiny builder) lives in `workers/families/<family>.py`. Adding a family is
a row here, a file there and its docs; nothing else names a family or a kind. Plain data: imports no
torch, read by the API, the workers and the deploy checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.tasks import TASK_NAMES

# Schedulers a request may name: name -> (diffusers class, options). GET /models lists them per task.
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
}
# A kind's own scheduler, which requests cannot change: Turbo's Euler ancestral with trailing spacing.
OWN_SCHEDULERS: dict[str, tuple[str, dict]] = {
    "turbo": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
}


@dataclass(frozen=True)
class Kind:
    name: str  # the models file's `kind`
    family: str  # the architecture (FAMILIES): adapters and ControlNets made for it fit this kind
    tasks: tuple[str, ...]  # the tasks (service/tasks.py) a model of this kind serves
    # The image defaults: the native side (a model's own where its files say otherwise: an SD 2.x 768-v
    # model) and the classifier-free guidance its models were tuned around. None: not an image model.
    size: int | None = None
    guidance_scale: float | None = None
    guidance: bool = True  # False: runs without classifier-free guidance (a request may give only 0)
    scheduler: str = "euler"  # the default: a SCHEDULERS name, or an OWN_SCHEDULERS one (then the only one)
    text_task: str | None = None  # the task a compatible API's text-to-image runs on a model of this kind
    tiny_sources: tuple[str, ...] = ("tiny",)  # the tiny profile's sources ("tiny:pai": the Chinese SD one)
    refiner: bool = False  # may name a refiner (SDXL's ensemble of experts)
    single_file: bool = False  # may load from one checkpoint file (A1111 / CompVis layout)
    frames: bool = False  # makes video: the model's `num_frames` (14 or 25 by its name, unless given)
    upscaler: bool = False  # an upscaler (the models file's `upscalers:`): no diffusion, its weights' own factor

    @property
    def own_scheduler(self) -> bool:
        return self.scheduler in OWN_SCHEDULERS


@dataclass(frozen=True)
class Family:
    name: str
    adapters: bool = False  # LoRAs and textual-inversion embeddings load into its models
    control: bool = False  # ControlNets fit it


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sd", adapters=True, control=True),
    Family("sdxl", adapters=True, control=True),
    Family("svd"),
    Family("upscaler"),
)}

# In the order the models file's docs and GET /models show kinds.
KINDS: dict[str, Kind] = {k.name: k for k in (
    # SD 1.x and 2.x, PAI-Diffusion's Chinese models included (a BERT tokenizer, `tiny:pai`).
    Kind("sd", "sd", tasks=("img2img", "txt2img", "inpaint", "train"), size=512, guidance_scale=7.5,
         text_task="txt2img", tiny_sources=("tiny", "tiny:pai", "tiny:inpaint"), single_file=True),
    # SDXL base (with its refiner for the `sdxl` task; without it for txt2img).
    Kind("sdxl", "sdxl", tasks=("sdxl", "img2img", "txt2img", "inpaint", "train"), size=1024, guidance_scale=5.0,
         text_task="sdxl", refiner=True, single_file=True),
    Kind("turbo", "sdxl", tasks=("turbo", "img2img"), size=512, guidance_scale=0.0, guidance=False,
         scheduler="turbo", text_task="turbo", single_file=True),
    Kind("svd", "svd", tasks=("svd",), frames=True),
    # Upscalers: ESRGAN, Real-ESRGAN, SwinIR, HAT... weights spandrel detects, and the built-in `lanczos`
    # (the models file's `upscalers:` section; `tiny`: a small random ESRGAN).
    Kind("upscaler", "upscaler", tasks=("upscale",), tiny_sources=("tiny",), upscaler=True),
)}
INPAINT_TASKS = ("inpaint",)  # what a dedicated inpainting checkpoint (a 9-channel UNet) serves
KIND_NAMES: tuple[str, ...] = tuple(KINDS)


def tasks_for_kind(kind: str) -> list[str]:
    """The tasks a model of `kind` serves, in the task table's order."""
    return [t for t in TASK_NAMES if t in KINDS[kind].tasks]

