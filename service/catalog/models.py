"""A models-file entry (`models:`): one model, where its weights come from and how to load them.

What differs per kind (its family, tasks, defaults, tiny sources) is the family table's
(`service/families.py`); an entry only says which kind it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from service.families import INPAINT_TASKS, KIND_NAMES, KINDS, Kind, Variant, tasks_for_kind

KindName = Literal[KIND_NAMES]  # type: ignore[valid-type]
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")  # unpickling runs code: loaded only when trusted
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")  # a single-file checkpoint
PICKLE_HINT = "pickled weights can run code when loaded"
BUILTIN_UPSCALER = "lanczos"  # the upscaler every catalogue has: Pillow's Lanczos filter, no weights
INPAINT_CHANNELS = 9  # an inpainting UNet's inputs: 4 latent, 1 mask, 4 masked-image latent channels


def _listed(names) -> str:
    """"a", "a and b", "a, b and c"."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: KindName
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
    # a local directory) or its kind's (512 for SD, 1024 for SDXL). An SD 2.x 768-v model: 768.
    size: tuple[int, int] | None = None
    num_frames: int | None = Field(None, ge=1, le=128)  # svd: the frames the model was trained for
    # A request's defaults for this model (GET /models shows them): steps, guidance and, for a model with a
    # T5 encoder, its prompt tokens. Default: its variant's (FLUX.1 schnell or dev, SD 3.5 large, medium or
    # large-turbo: service/families.py), read from its transformer's config or its source's name; else its kind's.
    steps: int | None = Field(None, ge=1, le=100)
    guidance_scale: float | None = Field(None, ge=0, le=20, allow_inf_nan=False)
    max_sequence_length: int | None = Field(None, ge=1, le=512)
    # A dedicated inpainting checkpoint (a UNet with 9 input channels: latents, mask, masked image). None:
    # read from the files (a local directory's unet/config.json, a .safetensors checkpoint's header).
    # It serves only `inpaint`, and is that task's default.
    inpainting: bool | None = None
    # upscalers: the factor the weights upscale by (spandrel reads it from them; a worker refuses to start
    # when they disagree). Default: 4 (most ESRGAN-family weights); `lanczos`: 2.
    scale: int | None = Field(None, ge=1, le=8)
    description: str = ""
    # The GPU path (workers/models.py, BENCHMARKS.md): each option is off unless the models file turns it on.
    channels_last: bool = False  # denoiser and VAE convolutions in channels-last memory format
    fuse_qkv: bool = False  # fused Q/K/V (and K/V) projections in the denoiser's and VAE's attention
    compile: bool = False  # regional torch.compile of the denoiser's repeated transformer blocks
    compile_mode: str | None = None  # torch.compile mode, e.g. "max-autotune-no-cudagraphs"
    compile_backend: str = "inductor"  # "eager"/"aot_eager" trace without generating code (tests)
    # (width, height) sizes warmed at worker start (with compile: compiled then, so no request pays it;
    # a request of another size then runs eagerly, never compiling). Empty: each task's default size.
    buckets: list[tuple[int, int]] = []
    # With compile: LoRAs hot-swap into `lora_slots` slots of rank `lora_rank` (the highest rank served).
    # Every slot runs in every job, so each costs compute: keep both as small as the LoRAs allow.
    lora_rank: int = Field(64, ge=1, le=1024)
    lora_slots: int = Field(2, ge=1, le=5)
    # Without compile, LoRAs merge into the denoiser's weights; the layers' own weights are kept aside to be
    # written back exactly: on the model's device (a switch costs a copy on the GPU, and memory: the
    # layers LoRAs train, once) or in CPU memory (no GPU memory; a switch copies them over the bus).
    lora_backup: Literal["device", "cpu"] = "device"
    _variant: Variant | None = PrivateAttr(None)  # its kind's variant (service/families.py), read once
    # sd3 only: load T5-XXL, the third text encoder (about 9 GB in float16). False: without it, as SD 3 was
    # trained to allow (its prompt tokens are zeros); less memory, a little less prompt adherence.
    t5: bool = True
    # Quantized weights (workers/quantize.py): the denoiser's and any T5 encoder's Linear layers. `int8`
    # (torchao, int8 weights; CPU or CUDA), `fp8` (torchao, float8 weights and matmuls; CUDA compute
    # capability 8.9+), `nf4` (bitsandbytes 4-bit; CUDA). A host that cannot run it stops the worker at start.
    quantize: Literal["int8", "fp8", "nf4"] | None = None

    @field_validator("size", mode="before")
    @classmethod
    def _square(cls, v):
        return (v, v) if isinstance(v, int) else v

    @model_validator(mode="after")
    def _check(self):
        kind = self.kind_row
        if self.refiner and not kind.refiner:
            raise ValueError(f"model {self.name}: only {_listed(k.name for k in KINDS.values() if k.refiner)} "
                             f"models take a refiner")
        if kind.frames and self.num_frames is None:
            name = self.source.rstrip("/").rsplit("/", 1)[-1].lower()
            self.num_frames = 25 if name.endswith("-xt") or "-xt-" in name else 14
        if self.cpu_offload and self.memory == "default":
            self.memory = "balanced"
        if self.memory == "minimal" and self.compile:
            raise ValueError(f"model {self.name}: `memory: minimal` offloads layer by layer, which `compile` "
                             f"cannot trace through; use `memory: balanced` with compile")
        if self.is_tiny and self.source not in kind.tiny_sources:
            raise ValueError(f"model {self.name}: tiny sources of kind {self.kind} are {kind.tiny_sources}")
        if self.single_file:
            if not kind.single_file:
                raise ValueError(f"model {self.name}: single-file checkpoints are for "
                                 f"{_listed(k.name for k in KINDS.values() if k.single_file)} models")
            if not self.config:
                raise ValueError(f"model {self.name}: a single-file checkpoint needs `config`, the diffusers-layout "
                                 f"directory or hub id of its architecture (configs and tokenizers), since "
                                 f"nothing is fetched at run time")
            if Path(self.source).suffix.lower() in PICKLE_SUFFIXES and not self.trust_pickle:
                raise ValueError(f"model {self.name}: {Path(self.source).name} is a pickle ({PICKLE_HINT}); set "
                                 f"`trust_pickle: true` for it if you trust its publisher, or give a .safetensors file")
        if not self.t5 and not kind.optional_t5:
            raise ValueError(f"model {self.name}: `t5: false` is for "
                             f"{_listed(k.name for k in KINDS.values() if k.optional_t5)} models (only they run "
                             f"without their T5 text encoder)")
        if self.quantize:
            self._check_quantize()
        self._check_defaults()
        if kind.upscaler:
            self._check_upscaler()
        elif self.scale is not None:
            raise ValueError(f"model {self.name}: `scale` is an upscaler's")
        if self.size is None:
            self.size = native_size(self) if kind.size else None
        if self.inpainting is None:
            self.inpainting = kind.size is not None and is_inpainting(self)
        return self

    def _check_quantize(self) -> None:
        """The settings `quantize` cannot work with (workers/quantize.py quantizes; the host is checked there)."""
        kind, setting = self.kind_row, self.quantize
        why = None
        if kind.upscaler or kind.frames:
            why = f"quantizes a text-to-image model's denoiser; {self.kind} models take none"
        elif setting == "nf4" and self.memory == "minimal":
            why = "cannot be combined with `memory: minimal` (group offloading cannot move bitsandbytes' packed " \
                  "4-bit weights layer by layer: the first job fails on CUDA); use `memory: balanced`"
        elif self.fuse_qkv:
            why = "cannot be combined with `fuse_qkv` (fusing concatenates the projections' weights, which are " \
                  "quantized tensors by then)"
        if why:
            raise ValueError(f"model {self.name}: `quantize: {setting}` {why}")

    def _check_upscaler(self) -> None:
        if self.source == BUILTIN_UPSCALER:
            self.scale = self.scale or 2
            return
        self.scale = self.scale or 4
        if self.is_tiny:
            return
        suffix = Path(self.source).suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            if not self.trust_pickle:
                raise ValueError(f"upscaler {self.name}: {Path(self.source).name} is a pickle ({PICKLE_HINT}); set "
                                 f"`trust_pickle: true` for it if you trust its publisher, or convert it: "
                                 f"fresco convert {Path(self.source).name} {Path(self.source).stem}.safetensors")
        elif suffix != ".safetensors":
            raise ValueError(f"upscaler {self.name}: its source is a .safetensors file (or a trusted .pth), "
                             f"or `{BUILTIN_UPSCALER}`")

    @property
    def kind_row(self) -> Kind:
        """This model's kind in the family table."""
        return KINDS[self.kind]

    @property
    def is_tiny(self) -> bool:
        return self.source == "tiny" or self.source.startswith("tiny:")

    @property
    def single_file(self) -> bool:
        """A checkpoint in one file (A1111 / CompVis layout), loaded with `from_single_file`."""
        return (not self.is_tiny and not self.kind_row.upscaler
                and Path(self.source).suffix.lower() in CHECKPOINT_SUFFIXES)

    @property
    def family(self) -> str:
        return self.kind_row.family

    @property
    def tasks(self) -> list[str]:
        """The tasks this model serves: its kind's, or only `inpaint` for an inpainting checkpoint."""
        if self.inpainting:
            return [t for t in tasks_for_kind(self.kind) if t in INPAINT_TASKS]
        return tasks_for_kind(self.kind)

    def _check_defaults(self) -> None:
        """The variant, and the defaults an entry may override: only for an image model, guidance only on one
        that runs with it, prompt tokens only where there is a T5 encoder."""
        kind = self.kind_row
        self._variant = variant_of(kind, self.source, self.config) if kind.variants else None
        given = [n for n in ("steps", "guidance_scale", "max_sequence_length") if getattr(self, n) is not None]
        if given and (kind.size is None or kind.own_scheduler):
            raise ValueError(f"model {self.name}: {_listed(f'`{n}`' for n in given)}: defaults of txt2img, img2img "
                             f"and inpaint requests, which {self.kind} models do not take")
        if self.guidance_scale and not self.guidance:
            raise ValueError(f"model {self.name}: it runs without guidance ({self.kind} "
                             f"{self._variant.name if self._variant else ''}); `guidance_scale` may only be 0")
        if self.max_sequence_length is not None and self.sequence_limit is None:
            raise ValueError(f"model {self.name}: `max_sequence_length` is the T5 text encoder's, which it has none of")

    @property
    def variant_row(self) -> Variant | None:
        """Which of its kind's published models it is (FLUX.1 schnell or dev, ...); None: its kind has none."""
        return self._variant

    @property
    def guidance(self) -> bool:
        """Whether it runs with guidance (False: a request may give only 0): its variant's, else its kind's."""
        return self._variant.guidance if self._variant else self.kind_row.guidance

    @property
    def sequence_limit(self) -> int | None:
        """The most T5 prompt tokens a request may ask for; None: the model has no T5 encoder."""
        return self.kind_row.max_sequence_length if self.t5 else None

    @property
    def schedulers(self) -> list[str]:
        """The schedulers a request may name for it (none for a kind with its own)."""
        return [] if self.kind_row.own_scheduler else list(self.kind_row.schedulers)

    def defaults(self) -> dict:
        """The image defaults of this model: its native size; steps and guidance (the models file's, else its
        variant's, else its kind's); with a T5 encoder, its prompt tokens."""
        if self.size is None:
            return {}
        kind, variant = self.kind_row, self._variant
        guidance = self.guidance_scale
        if guidance is None:
            guidance = variant.guidance_scale if variant else kind.guidance_scale
        out = {"width": self.size[0], "height": self.size[1], "guidance_scale": guidance,
               "steps": self.steps or (variant.steps if variant else kind.steps)}
        if self.sequence_limit is not None:
            out["max_sequence_length"] = self.max_sequence_length or (
                variant.max_sequence_length if variant and variant.max_sequence_length else self.sequence_limit)
        return out

    def facts(self) -> dict:
        """What `GET /models` may show about the model, by name (each task row picks its own)."""
        return {"refiner": bool(self.refiner), "max_num_frames": self.num_frames, "defaults": self.defaults(),
                "family": self.family, "inpainting": bool(self.inpainting), "scale": self.scale}


def variant_of(kind: Kind, source: str, config: str | None = None) -> Variant:
    """Which of `kind`'s variants a model from `source` is: those its local transformer config.json allows
    (FLUX.1's `guidance_embeds`, SD 3.5's `num_layers`), then the first of them its source's name names, else
    the last of them (a hub id or a fine-tune's directory: its name; the tiny profile: `tiny:schnell`)."""
    variants = kind.variants
    folder = Path(config or source)
    if source != "tiny" and not source.startswith("tiny:") and folder.is_dir():
        try:
            config = json.loads((folder / "transformer" / "config.json").read_text())
        except (OSError, ValueError):
            config = None
        if isinstance(config, dict):
            variants = tuple(v for v in variants if all(config.get(k, val) == val for k, val in v.config)) or variants
    name = source.rstrip("/").rsplit("/", 1)[-1].lower()
    return next((v for v in variants if any(n in name for n in v.names)), variants[-1])


def native_size(spec: ModelSpec) -> tuple[int, int]:
    """A model's native size: its UNet's `sample_size` times its VAE's scale, read from a local diffusers
    directory (an SD 2.x 768-v model says 96 × 8), else its kind's."""
    folder = Path(spec.config or spec.source)
    size = spec.kind_row.size
    if not spec.is_tiny and folder.is_dir():
        try:
            unet = json.loads((folder / "unet" / "config.json").read_text())
            vae = json.loads((folder / "vae" / "config.json").read_text())
            sample = unet["sample_size"]
            size = (sample if isinstance(sample, int) else sample[0]) * 2 ** (len(vae["block_out_channels"]) - 1)
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass
    return size, size


def is_inpainting(spec: ModelSpec) -> bool:
    """Whether a model's UNet takes 9 input channels: from a local directory's unet/config.json, or from a
    .safetensors checkpoint's header (its first convolution's shape), without loading any weight. A hub id
    or a pickle: not known here (say `inpainting: true` in the models file)."""
    if spec.is_tiny:
        return spec.source == "tiny:inpaint"
    source = Path(spec.source)
    try:
        if source.is_dir():
            config = json.loads((source / "unet" / "config.json").read_text())
            return config.get("in_channels") == INPAINT_CHANNELS
        if source.suffix.lower() == ".safetensors" and source.is_file():
            with source.open("rb") as f:
                length = int.from_bytes(f.read(8), "little")
                if not 0 < length < 100 * 2**20:
                    return False
                header = json.loads(f.read(length))
            for key in ("model.diffusion_model.input_blocks.0.0.weight", "conv_in.weight"):
                if key in header:
                    return header[key]["shape"][1] == INPAINT_CHANNELS
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        pass
    return False
