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
    # Flow matching (SD 3 / 3.5, FLUX.1): their transformers predict a velocity, which only these integrate.
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "flow_heun": ("FlowMatchHeunDiscreteScheduler", {}),
}
# The schedulers of models whose denoiser predicts noise (or v): the UNet families.
UNET_SCHEDULERS = ("euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "unipc", "heun")
# A kind's own scheduler, which requests cannot change: Turbo's Euler ancestral with trailing spacing.
OWN_SCHEDULERS: dict[str, tuple[str, dict]] = {
    "turbo": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
}


@dataclass(frozen=True)
class Variant:
    """One of a kind's published models, whose defaults differ from its siblings': FLUX.1 schnell (distilled to
    4 steps without guidance) or dev, SD 3.5 large, medium or large-turbo. A model is the first variant
    whose `config` values its local transformer config.json has (where it is readable) and one of whose `names`
    its source's name holds; else the last one its config allows (service/catalog/models.py `variant_of`)."""

    name: str
    steps: int
    guidance_scale: float
    guidance: bool = True  # False: distilled to run without guidance (a request may give only 0)
    max_sequence_length: int | None = None  # the T5 prompt tokens it was trained with (None: no T5)
    names: tuple[str, ...] = ()  # what a source's name holds for it ("schnell", "large-turbo")
    aliases: tuple[str, ...] = ()  # names OpenAI clients send for it (service/api/compat/models.py)
    config: tuple[tuple[str, object], ...] = ()  # (key, value) its transformer's config.json has


def _flux1(variant: str) -> tuple[str, ...]:
    return f"flux.1-{variant}", f"flux-{variant}", f"flux1-{variant}", f"flux-1-{variant}"


def _sd35(variant: str) -> tuple[str, ...]:
    return f"sd3.5-{variant}", f"sd-3.5-{variant}", f"sd35-{variant}", f"stable-diffusion-3.5-{variant}"


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
    schedulers: tuple[str, ...] = UNET_SCHEDULERS  # the SCHEDULERS a request may name for it
    steps: int = 30  # the default steps of txt2img, img2img and inpaint (a variant's, where the kind has them)
    # What an image's sides must be multiples of: the VAE's 8, times the transformer's patch (SD 3's 2×2
    # patches, FLUX's 2×2 packing: 16).
    size_multiple: int = 8
    variants: tuple[Variant, ...] = ()  # its models' defaults by variant (Variant), in the order they are matched
    # A T5 text encoder's most prompt tokens (the request's `max_sequence_length`); None: no T5, no such field.
    max_sequence_length: int | None = None
    # Its `guidance_scale` is a guidance *embedding* the transformer was distilled with (FLUX.1 dev), not
    # classifier-free guidance: one pass per step, and A1111/Forge call it "Distilled CFG Scale".
    distilled_guidance: bool = False
    text_task: str | None = None  # the task a compatible API's text-to-image runs on a model of this kind
    tiny_sources: tuple[str, ...] = ("tiny",)  # the tiny profile's sources ("tiny:pai": the Chinese SD one)
    refiner: bool = False  # may name a refiner (SDXL's ensemble of experts)
    optional_t5: bool = False  # may load without its T5 text encoder (`t5: false`: SD 3 was trained to allow it)
    single_file: bool = False  # may load from one checkpoint file (A1111 / CompVis layout)
    frames: bool = False  # makes video: the model's `num_frames` (14 or 25 by its name, unless given)
    upscaler: bool = False  # an upscaler (the models file's `upscalers:`): no diffusion, its weights' own factor

    @property
    def own_scheduler(self) -> bool:
        return self.scheduler in OWN_SCHEDULERS


@dataclass(frozen=True)
class Family:
    name: str
    adapters: bool = False  # LoRAs load into its models
    embeddings: bool = False  # textual-inversion embeddings do too (a format exists for its text encoders)
    control: bool = False  # ControlNets fit it
    # A LoRA file made for this family: a regex some of its keys match, in any layout trainers save
    # (diffusers/PEFT, kohya, the original checkpoints' names); workers/lora_families.py reads them.
    lora_keys: str = ""
    lora_keys_over: tuple[str, ...] = ()  # families whose marks this one's outrank in a file holding both


# The UNet families' blocks, in diffusers' names (`down_blocks`) and the original ones (`input_blocks`).
UNET_LORA_KEYS = r"(^|[._])(down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)[._]"
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sd", adapters=True, embeddings=True, control=True, lora_keys=UNET_LORA_KEYS),
    Family("sdxl", adapters=True, embeddings=True, control=True, lora_keys=UNET_LORA_KEYS),
    # SD 3's joint blocks (`joint_blocks_N_context_block` in its original names); `attn`, not the UNet's `attn1`.
    Family("sd3", adapters=True, lora_keys=r"(joint_blocks|context_block)[._]|transformer_blocks[._]\d+[._]attn[._]"),
    # FLUX.1's double and single blocks (BFL/kohya/XLabs names, diffusers' single_transformer_blocks); a
    # diffusers-layout FLUX LoRA has SD 3's joint-block names too, and its single blocks settle it.
    Family("flux", adapters=True, lora_keys=r"(double_blocks|single_blocks|single_transformer_blocks)[._]",
           lora_keys_over=("sd3",)),
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
    # Stable Diffusion 3 / 3.5 (medium, large, large-turbo): an MMDiT transformer, CLIP-L, OpenCLIP bigG and
    # T5-XXL (optional), a 16-channel VAE; flow matching. Defaults per model: service/catalog/models.py.
    Kind("sd3", "sd3", tasks=("img2img", "txt2img", "inpaint"), size=1024, guidance_scale=3.5,
         scheduler="flow_euler", schedulers=("flow_euler", "flow_heun"), text_task="txt2img", optional_t5=True,
         steps=28, max_sequence_length=512, size_multiple=16, variants=(
             Variant("large-turbo", 4, 0.0, guidance=False, max_sequence_length=256, names=("large-turbo", "turbo"),
                     config=(("num_layers", 38),), aliases=_sd35("large-turbo")),
             Variant("medium", 40, 4.5, max_sequence_length=256, names=("medium",), config=(("num_layers", 24),),
                     aliases=_sd35("medium")),
             Variant("large", 28, 3.5, max_sequence_length=256, names=("large",), config=(("num_layers", 38),),
                     aliases=_sd35("large")),
         )),
    # FLUX.1 schnell and dev: a 12B rectified-flow transformer, CLIP-L and T5-XXL, latents packed 2×2.
    # schnell is distilled to run without guidance; dev takes a guidance *embedding* (not CFG).
    Kind("flux", "flux", tasks=("img2img", "txt2img", "inpaint"), size=1024, guidance_scale=3.5,
         scheduler="flow_euler", schedulers=("flow_euler",), text_task="txt2img",
         tiny_sources=("tiny", "tiny:schnell"), steps=28, max_sequence_length=512, distilled_guidance=True,
         size_multiple=16,
         variants=(
             Variant("schnell", 4, 0.0, guidance=False, max_sequence_length=256, names=("schnell",),
                     config=(("guidance_embeds", False),), aliases=_flux1("schnell")),
             Variant("dev", 28, 3.5, max_sequence_length=512, names=("dev",), config=(("guidance_embeds", True),),
                     aliases=_flux1("dev")),
         )),
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

