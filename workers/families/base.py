"""What a family file declares (workers/families/__init__.py tells the whole story)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from service.catalog import ModelSpec


@dataclass(frozen=True)
class TextEncoder:
    encoder: str  # the pipeline's attribute: "text_encoder"
    tokenizer: str  # "tokenizer"
    embedding_key: str  # the key of its vectors in an SDXL-layout embedding file: "clip_l", "clip_g"


@dataclass(frozen=True)
class WorkerFamily:
    name: str
    # mode -> diffusers pipeline class: "txt2img", "img2img", "control:txt2img", ...; "refiner": the class a
    # refiner loads as (it shares the VAE and the last text encoder).
    pipelines: dict[str, str]
    loads_as: str  # the mode whose class a model's source loads as ("txt2img"; SVD: "img2vid")
    tiny: Callable[[ModelSpec], tuple[Any, Any]]  # the tiny profile's (pipeline, refiner or None) for a spec
    # The full-size architecture on whatever device is current (meta for counting): its modules, with a
    # refiner's when asked, from bench/configs/full_size.json's configs (deploy sizing, bench/gpu.py).
    full_size: Callable[[dict, bool], list[Any]]
    options: dict = field(default_factory=dict)  # what every pipeline is built with (no watermark, no checker)
    denoiser: str = "unet"
    text_encoders: tuple[TextEncoder, ...] = ()
    # Linear latent -> RGB factors (a row per latent channel: 4 for the SD VAE's latents) and bias for live
    # previews; None: the first three channels, halved.
    preview_factors: tuple[tuple[tuple[float, ...], ...], tuple[float, ...]] | None = None
    compile_blocks: tuple[str, ...] = ()  # the denoiser's repeated blocks regional compilation compiles
    tiny_denoiser: Callable[[], Any] | None = None  # a fresh tiny denoiser (tiny ControlNets and LoRAs)

    def pipeline_class(self, mode: str):
        """The diffusers class of `mode`'s pipeline."""
        import diffusers

        if mode not in self.pipelines:
            raise ValueError(f"{self.name} models have no {mode} pipeline")
        return getattr(diffusers, self.pipelines[mode])

    def class_names(self) -> set[str]:
        """Every pipeline class this family's models run as."""
        return set(self.pipelines.values())
