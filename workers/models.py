"""Model loading: a catalogue entry -> resident diffusers pipelines, loaded once at worker start.

What differs per family (the pipeline class each mode runs as, the options it is built with, the
denoiser, the tiny builder, the blocks to compile) is its family file's (workers/families/). `tiny`
entries are built offline with random weights by it; every other source is a hub id or a local
directory read with `from_pretrained`, or one checkpoint file. A model's pipelines share modules: the
refiner takes the base's `vae` and last text encoder, img2img, inpainting and ControlNet pipelines are
`from_pipe` on the base.

The GPU path, per model in the models file (all off by default): `dtype` (bfloat16/float16),
`channels_last`, `fuse_qkv` (fused attention projections), `compile` (regional torch.compile of the
denoiser's repeated transformer blocks, warmed at start on the model's size `buckets` so no request pays
compilation; afterwards an unseen shape runs eagerly instead of recompiling), the `vae` override (the
fp16-fix VAE), `vae_tiling`/`vae_slicing`, `memory` (workers/memory.py: offloading, `place()`).
`optimize()` applies them; workers/runtime.py `warm_up()` runs each pipeline once per bucket.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from service.catalog import ModelSpec
from service.families import OWN_SCHEDULERS, SCHEDULERS
from workers import execution_device, quantize
from workers.families import WorkerFamily, family_of
from workers.memory import apply_memory
from workers.previews import load_previewer

log = logging.getLogger("fresco.models")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(spec: ModelSpec) -> torch.device:
    if spec.device != "auto":
        return torch.device(spec.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(spec: ModelSpec, device: torch.device) -> torch.dtype:
    if spec.dtype != "auto":
        return DTYPES[spec.dtype]
    return torch.float16 if device.type == "cuda" else torch.float32


# What torch's CPU probe (cpuinfo) calls the instructions that compute in bfloat16: x86's AVX512-BF16 and
# AMX-BF16, Arm's BF16 and SVE-BF16. Without them torch emulates bfloat16, about 5x slower than float32
# (a 4096² matmul, measured on a CPU without them: 59 against 282 GFLOPS).
BF16_INSTRUCTIONS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
_warned_slow_bf16: set[str] = set()  # the models warned about, once each per process


def cpu_computes_bfloat16() -> bool:
    """Whether this machine's CPU has bfloat16 instructions (`torch.cpu.get_capabilities()`); True when
    torch cannot tell (nothing is said then)."""
    try:
        capabilities = torch.cpu.get_capabilities()
    except Exception:  # an older torch, or a probe that fails: unknown
        return True
    return any(capabilities.get(flag) for flag in BF16_INSTRUCTIONS)


def warn_slow_bfloat16(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> None:
    """One warning per model: `dtype: bfloat16` running on a CPU that has no bfloat16 instructions."""
    if dtype != torch.bfloat16 or device.type != "cpu" or spec.name in _warned_slow_bf16:
        return
    if cpu_computes_bfloat16():
        return
    _warned_slow_bf16.add(spec.name)
    log.warning("model %s: dtype bfloat16 on a CPU without bfloat16 instructions (AVX512-BF16, AMX-BF16) runs "
                "about 5x slower than float32; set `dtype: float32` (or `auto`) for it in the models file",
                spec.name)


def make_scheduler(name: str, config) -> Any:
    """A fresh scheduler instance per job (schedulers keep state), from the model's own config."""
    import diffusers

    cls_name, options = OWN_SCHEDULERS[name] if name in OWN_SCHEDULERS else SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(config, **options)


@dataclass
class LoadedModel:
    spec: ModelSpec
    pipe: Any  # the family's pipeline of its `loads_as` mode: StableDiffusion(XL)Pipeline, ...
    device: torch.device
    dtype: torch.dtype
    scheduler_config: Any
    refiner: Any = None
    refiner_scheduler_config: Any = None
    load_s: float = 0.0
    loras: Any = None  # workers/loras.py Loras, for a model LoRAs and embeddings can be used with
    controls: Any = None  # workers/control.py Controls, for a model some ControlNets fit
    previewer: Any = None  # workers/previews.py Previewer: the model's live previews
    upscalers: dict = field(default_factory=dict)  # the catalogue's upscalers by name, for hires (workers/hires.py)
    _img2img: Any = field(default=None, repr=False)
    _inpaint: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def family(self) -> WorkerFamily:
        return family_of(self.spec)

    @property
    def denoiser(self):
        """The module that runs every step (the UNet, or a family's transformer)."""
        return getattr(self.pipe, self.family.denoiser)

    def derive(self, mode: str, **components):
        """The family's pipeline of `mode` ("img2img", "control:txt2img") on this model's modules (`from_pipe`:
        no second copy of the weights), with `components` added (a ControlNet), placed like the model's own."""
        pipe = self.family.pipeline_class(mode).from_pipe(self.pipe, dtype=self.dtype, **components)
        pipe.set_progress_bar_config(disable=True)
        place(pipe, self.spec, self.device)
        return pipe

    def img2img(self):
        """The img2img pipeline on the same modules, built once."""
        if self._img2img is None:
            self._img2img = self.derive("img2img")
        return self._img2img

    def inpaint(self):
        """The inpainting pipeline on the same modules, built once: with a 4-channel UNet diffusers blends
        the latents with the mask at every step; an inpainting checkpoint's 9-channel UNet sees the mask."""
        if self._inpaint is None:
            self._inpaint = self.derive("inpaint")
        return self._inpaint


_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _weight_variants(folder: Path) -> tuple[bool, set[str]]:
    """Whether `folder` holds plain weight files, and which variants it holds (`x.fp16.safetensors`,
    sharded `x.fp16-00001-of-00002.safetensors`: "fp16")."""
    plain, variants = False, set()
    for f in folder.iterdir():
        if f.suffix not in _WEIGHT_SUFFIXES or not f.is_file():
            continue
        parts = f.name[: -len(f.suffix)].split(".")
        if len(parts) == 1:
            plain = True
        else:
            variants.add(parts[-1].split("-")[0])
    return plain, variants


def local_variant(source: str, name: str, given: str | None) -> str | None:
    """The `variant` to load a local model directory with: the models file's, or, when it gives none
    and some component holds only variant weights (`*.fp16.safetensors`, as hub snapshots downloaded
    with `variant="fp16"` do), that variant. A hub id is left to diffusers. Two variants and no plain
    weights is ambiguous: an error that names them."""
    path = Path(source)
    if given or not path.is_dir():
        return given
    needs: set[str] = set()
    for folder in [path, *(p for p in path.iterdir() if p.is_dir())]:
        plain, variants = _weight_variants(folder)
        if variants and not plain:
            needs |= variants
    if not needs:
        return None
    if len(needs) > 1:
        raise ValueError(f"model {name}: {source} holds only {sorted(needs)} variant weights for some components; "
                         f"set `variant:` to one of them in the models file")
    variant = needs.pop()
    log.info("model %s: %s holds only %r variant weights for some components; loading that variant "
             "(set `variant: %s` in the models file to say so)", name, source, variant, variant)
    return variant


def _missing_weights_hint(exc: Exception, spec: ModelSpec) -> Exception:
    """diffusers' "no file named diffusion_pytorch_model.bin" when a repository holds only variant
    weights, with the fix a user can make."""
    if "no file named" in str(exc) and not spec.variant:
        return ValueError(f"model {spec.name}: {exc}. If {spec.source} holds only variant weights (for example "
                          f"`*.fp16.safetensors`), set `variant: fp16` for it in the models file")
    return exc


def pickled_weights(source: str) -> list[str]:
    """The folders of a local diffusers directory (its components, or itself: a single model such as a
    ControlNet) whose weights exist only as pickles (`*.bin`)."""
    path = Path(source)
    if not path.is_dir():
        return []
    out = []
    for folder in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        files = [f.name for f in folder.iterdir() if f.is_file()]
        if any(f.endswith(".bin") for f in files) and not any(f.endswith(".safetensors") for f in files):
            out.append(folder.name)
    return out


def refuse_pickles(owner: str, trusted: bool, *sources: str | None) -> None:
    """Pickled weights load only for an entry with `trust_pickle: true` (`owner`: "model x",
    "controlnet y"): unpickling runs code."""
    if trusted:
        return
    for source in filter(None, sources):
        pickled = pickled_weights(source)
        if pickled:
            raise ValueError(f"{owner}: {source} holds pickled weights only ({', '.join(pickled)}: .bin files), "
                             f"and unpickling can run code. Set `trust_pickle: true` for it if you trust its "
                             f"publisher, or convert it to safetensors: fresco convert {source} DEST")


def pickle_hint(exc: Exception, owner: str, trusted: bool) -> Exception:
    """diffusers' error for a hub repository without safetensors weights, with what to do about it."""
    if not trusted and "safetensors" in str(exc).lower():
        return ValueError(f"{owner}: {exc}. The repository may hold pickled weights only; set "
                          f"`trust_pickle: true` for it if you trust its publisher")
    return exc


def _from_pretrained(spec: ModelSpec, dtype: torch.dtype):
    from diffusers import AutoencoderKL

    def variant_kwargs(source: str, given: str | None = spec.variant) -> dict[str, Any]:
        variant = local_variant(source, spec.name, given)
        return {"variant": variant} if variant else {}

    family = family_of(spec)
    cls = family.pipeline_class(family.loads_as)
    options: dict[str, Any] = {**family.options, **family.load_options(spec), "dtype": dtype}
    owner = f"model {spec.name}"
    refuse_pickles(owner, spec.trust_pickle, None if spec.single_file else spec.source, spec.refiner, spec.vae)
    try:
        if spec.vae:
            # `variant` names the pipeline's files; a VAE override (the fp16-fix VAE) has its own.
            options["vae"] = AutoencoderKL.from_pretrained(spec.vae, dtype=dtype, use_safetensors=not spec.trust_pickle,
                                                           **variant_kwargs(spec.vae, None))
        if spec.single_file:
            # One checkpoint in the original layout: the weights from the file, configs and tokenizers
            # from `config` (a local directory, or a hub id already in the cache: nothing is fetched).
            pipe = cls.from_single_file(spec.source, config=spec.config, local_files_only=True, **options)
        else:
            pipe = cls.from_pretrained(spec.source, use_safetensors=not spec.trust_pickle,
                                       **variant_kwargs(spec.source), **options,
                                       **quantize.load_kwargs(spec, cls, family.denoiser, dtype))
        refiner = None
        if spec.refiner:
            # The refiner shares the base's VAE and its last text encoder (SDXL's bigG).
            shared = family.text_encoders[-1].encoder
            refiner = family.pipeline_class("refiner").from_pretrained(
                spec.refiner, **{shared: getattr(pipe, shared)}, vae=pipe.vae, **family.options, dtype=dtype,
                use_safetensors=not spec.trust_pickle, **variant_kwargs(spec.refiner))
    except (OSError, ValueError) as exc:
        raise pickle_hint(_missing_weights_hint(exc, spec), owner, spec.trust_pickle) from exc
    return pipe, refiner


def no_needless_upcast(pipe, dtype: torch.dtype) -> None:
    """An SDXL VAE configured with `force_upcast` (SDXL's and Turbo's own VAE) makes diffusers' img2img
    cast the whole VAE to float32 and back around every encode, whatever its dtype. The upcast exists
    because that VAE overflows in float16; in bfloat16 (float32's range) or float32 it is needless work
    on every job, so it is turned off for those dtypes. In float16 it stays (or use the fp16-fix VAE)."""
    vae = getattr(pipe, "vae", None)
    if vae is not None and dtype != torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.register_to_config(force_upcast=False)


def place(pipe, spec: ModelSpec, device: torch.device) -> None:
    """Where `pipe`'s weights live (workers/memory.py): all on `device`, or offloaded per the model's
    `memory`. Every pipeline of a model goes through it, the refiner and `from_pipe` ones too."""
    if pipe is None:
        return
    apply_memory(pipe, spec.memory, device)
    if spec.memory == "default":
        execution_device.pin(pipe, device)


def freeze(pipe) -> None:
    """No parameter needs a gradient in a worker. Said once at load, for every module: PEFT freezes the
    base weights when a LoRA loads, and a frozen weight sends torch's matmul down another (equally
    right, differently rounded) path on the CPU, so a job without LoRAs would no longer give the same
    pixels after one with. Frozen from the start, every job runs the same arithmetic. And in eval mode:
    modules built in memory (the tiny profile, the GPU bench's full-size ones) start in training mode,
    where T5's dropout draws from torch's global generator (a seed would no longer reproduce its image)
    and fails on bitsandbytes' 4-bit layers (seen on an H200 with `quantize: nf4`)."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False).eval()


def load_model(spec: ModelSpec, loras: bool = False) -> LoadedModel:
    """`loras`: LoRAs may be used with this model (fused Q/K/V projections would bypass them)."""
    started = time.perf_counter()
    device = resolve_device(spec)
    dtype = resolve_dtype(spec, device)
    warn_slow_bfloat16(spec, device, dtype)
    quantize.check_host(spec, device)  # before any weight loads
    pipe, refiner = family_of(spec).tiny(spec) if spec.is_tiny else _from_pretrained(spec, dtype)
    if spec.kind_row.own_scheduler:  # Turbo: its own scheduler, from the model's config
        pipe.scheduler = make_scheduler(spec.kind_row.scheduler, pipe.scheduler.config)
    for p in (pipe, refiner):
        if p is None:
            continue
        if p.dtype != dtype:
            p.to(dtype=dtype)
        if spec.vae_tiling:
            p.vae.enable_tiling()
        if spec.vae_slicing:
            p.vae.enable_slicing()
        p.set_progress_bar_config(disable=True)
        no_needless_upcast(p, dtype)
        freeze(p)
        quantize.apply(p, spec, device)  # what did not load quantized (tiny, single-file, the refiner)
    if loras and spec.fuse_qkv:
        log.warning("%s: fuse_qkv is off because LoRAs may be used with this model (a fused projection "
                    "would bypass their layers)", spec.name)
        spec = spec.model_copy(update={"fuse_qkv": False})
    optimize(spec, pipe, refiner)
    for p in (pipe, refiner):  # after every option that replaces weights: the offload hooks know these
        place(p, spec, device)
    loaded = LoadedModel(spec=spec, pipe=pipe, device=device, dtype=dtype, scheduler_config=pipe.scheduler.config,
                         refiner=refiner, refiner_scheduler_config=refiner.scheduler.config if refiner else None,
                         previewer=load_previewer(family_of(spec), spec.preview_decoder, device, dtype))
    loaded.load_s = time.perf_counter() - started
    log.info("loaded model %s (%s, %s on %s) in %.2fs", spec.name, spec.source, str(dtype).removeprefix("torch."),
             device, loaded.load_s)
    return loaded


# ---------------------------------------------------------------- the GPU path

def fuse_qkv(module) -> int:
    """Fuse the Q/K/V projections of every attention layer that runs diffusers' default SDPA processor
    (self-attention: one QKV matmul; cross-attention: one KV matmul). A transformer whose attention runs
    none (SD 3's joint attention, FLUX's): diffusers' own `fuse_qkv_projections`, which also fuses the
    text stream's projections and swaps in the matching fused processors. Returns how many were fused."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0, FusedAttnProcessor2_0

    fused = 0
    for sub in module.modules():
        if isinstance(sub, Attention) and type(sub.processor) is AttnProcessor2_0:
            sub.fuse_projections(fuse=True)
            sub.set_processor(FusedAttnProcessor2_0())
            fused += 1
    if not fused and hasattr(module, "fuse_qkv_projections"):
        module.fuse_qkv_projections()
        fused = sum(1 for sub in module.modules() if getattr(sub, "fused_projections", False))
    return fused


def channels_last(module) -> None:
    """Every 4-D weight (the 2-D convolutions) in channels-last memory format, which cuDNN's fastest
    convolution kernels use; 5-D weights (SVD's temporal convolutions) stay as they are."""
    with torch.no_grad():
        for param in module.parameters():
            if param.dim() == 4:
                param.data = param.data.to(memory_format=torch.channels_last)


def compile_blocks(module, spec: ModelSpec) -> int:
    """Regional compilation: torch.compile each repeated transformer block (one compiled graph serves
    every block of the same shape), much faster to compile than the whole UNet, nearly as fast to run."""
    import torch._dynamo

    # The family's repeated blocks (diffusers' `_repeated_blocks` where the family file names none).
    names = family_of(spec).compile_blocks or tuple(getattr(module, "_repeated_blocks", ()) or ())
    # Shapes differ per UNet level, bucket and batch size: room for every one of them.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    torch._dynamo.config.accumulated_cache_size_limit = max(torch._dynamo.config.accumulated_cache_size_limit, 1024)
    options: dict[str, Any] = {"fullgraph": True, "backend": spec.compile_backend}
    if spec.compile_mode:
        options["mode"] = spec.compile_mode
    compiled = 0
    for sub in module.modules():
        if type(sub).__name__ in names:
            sub.compile(**options)
            compiled += 1
    return compiled


def optimize(spec: ModelSpec, *pipes) -> None:
    """Apply the model's GPU-path options to its pipelines' UNets and VAEs (shared modules once)."""
    seen: set[int] = set()
    for pipe in pipes:
        if pipe is None:
            continue
        denoiser = family_of(spec).denoiser
        for role in (denoiser, "vae"):
            module = getattr(pipe, role, None)
            if module is None or id(module) in seen:
                continue
            seen.add(id(module))
            if spec.fuse_qkv and role == denoiser and not family_of(spec).fuses_qkv:
                log.warning("%s: the %s's projections stay unfused: diffusers' fused processor for it would "
                            "compute other images (fuse_qkv applies to the VAE only)", spec.name, role)
            elif spec.fuse_qkv:
                log.info("%s: fused the projections of %d attention layers in the %s", spec.name, fuse_qkv(module),
                         role)
            if spec.channels_last:  # a transformer's only convolution is its patch embedding: harmless
                channels_last(module)
            if spec.compile and role == denoiser:
                log.info("%s: compiling %d transformer blocks of the %s (%s)", spec.name,
                         compile_blocks(module, spec), role, spec.compile_backend)


def freeze_compiled() -> None:
    """After every warm-up: a shape no warm-up compiled runs eagerly, never compiling in a request."""
    torch.compiler.set_stance("eager_on_recompile")
