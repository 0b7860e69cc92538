"""Model loading: a catalogue entry -> resident diffusers pipelines, loaded once at worker start.

`tiny` entries are built offline with random weights (workers/tiny.py); every other source is a hub
id or a local directory read with `from_pretrained`. SDXL base, refiner and img2img share modules:
the refiner takes the base's `vae` and `text_encoder_2`, img2img is `from_pipe` on the base.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from service.catalog import SCHEDULERS, TURBO_SCHEDULER, ModelSpec
from workers import tiny

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


def make_scheduler(name: str, config) -> Any:
    """A fresh scheduler instance per job (schedulers keep state), from the model's own config."""
    import diffusers

    cls_name, options = TURBO_SCHEDULER if name == "turbo" else SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(config, **options)


@dataclass
class LoadedModel:
    spec: ModelSpec
    pipe: Any  # StableDiffusionXLPipeline (sdxl, turbo) or StableVideoDiffusionPipeline (svd)
    device: torch.device
    dtype: torch.dtype
    scheduler_config: Any
    refiner: Any = None
    refiner_scheduler_config: Any = None
    load_s: float = 0.0
    _img2img: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def img2img(self):
        """An img2img pipeline on the same modules (no second copy of the weights), built once."""
        if self._img2img is None:
            from diffusers import StableDiffusionXLImg2ImgPipeline

            self._img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(self.pipe, dtype=self.dtype)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img


def _from_pretrained(spec: ModelSpec, dtype: torch.dtype):
    from diffusers import (AutoencoderKL, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline,
                           StableVideoDiffusionPipeline)

    kwargs: dict[str, Any] = {"dtype": dtype}
    if spec.variant:
        kwargs["variant"] = spec.variant
    if spec.kind == "svd":
        return StableVideoDiffusionPipeline.from_pretrained(spec.source, **kwargs), None
    if spec.vae:
        kwargs["vae"] = AutoencoderKL.from_pretrained(spec.vae, dtype=dtype)
    pipe = StableDiffusionXLPipeline.from_pretrained(spec.source, add_watermarker=False, **kwargs)
    refiner = None
    if spec.refiner:
        refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
            spec.refiner, text_encoder_2=pipe.text_encoder_2, vae=pipe.vae, add_watermarker=False,
            **{k: v for k, v in kwargs.items() if k != "vae"})
    return pipe, refiner


def _tiny(spec: ModelSpec):
    if spec.kind == "svd":
        return tiny.svd(), None
    pipe = tiny.sdxl_base(seed=0 if spec.kind == "sdxl" else 3)
    refiner = tiny.sdxl_refiner(pipe) if spec.refiner else None
    return pipe, refiner


def load_model(spec: ModelSpec) -> LoadedModel:
    started = time.perf_counter()
    device = resolve_device(spec)
    dtype = resolve_dtype(spec, device)
    pipe, refiner = _tiny(spec) if spec.is_tiny else _from_pretrained(spec, dtype)
    if spec.kind == "turbo":
        pipe.scheduler = make_scheduler("turbo", pipe.scheduler.config)
    for p in (pipe, refiner):
        if p is None:
            continue
        if spec.cpu_offload and device.type == "cuda":
            p.enable_model_cpu_offload(device=device)
        elif p.dtype != dtype:
            p.to(device=device, dtype=dtype)
        else:
            p.to(device=device)
        if spec.vae_tiling:
            p.vae.enable_tiling()
        if spec.vae_slicing:
            p.vae.enable_slicing()
        p.set_progress_bar_config(disable=True)
    loaded = LoadedModel(spec=spec, pipe=pipe, device=device, dtype=dtype, scheduler_config=pipe.scheduler.config,
                         refiner=refiner, refiner_scheduler_config=refiner.scheduler.config if refiner else None)
    loaded.load_s = time.perf_counter() - started
    log.info("loaded model %s (%s, %s on %s) in %.2fs", spec.name, spec.source, str(dtype).removeprefix("torch."),
             device, loaded.load_s)
    return loaded
