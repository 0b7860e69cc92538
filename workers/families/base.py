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
    label: str = "CLIP"  # what prompt-length warnings call it ("T5")
    # The job parameter that sets how many tokens it reads (T5's `max_sequence_length`); None: its
    # tokenizer's `model_max_length` (CLIP's 77).
    length_param: str | None = None


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
    # What a model's `from_pretrained` is given besides `options`, per models-file entry (SD 3 without T5:
    # `text_encoder_3=None, tokenizer_3=None`).
    load_options: Callable[[ModelSpec], dict] = lambda spec: {}
    denoiser: str = "unet"
    text_encoders: tuple[TextEncoder, ...] = ()
    # Linear latent -> RGB factors (a row per latent channel: 4 for the SD VAE's latents) and bias for live
    # previews; None: the first three channels, halved.
    preview_factors: tuple[tuple[tuple[float, ...], ...], tuple[float, ...]] | None = None
    # `fuse_qkv` fuses its denoiser's attention projections; False where diffusers' fused processor computes
    # something else (SD 3.5: FusedJointAttnProcessor2_0 leaves out the RMS normalisation of Q and K).
    fuses_qkv: bool = True
    compile_blocks: tuple[str, ...] = ()  # the denoiser's repeated blocks regional compilation compiles
    tiny_denoiser: Callable[[], Any] | None = None  # a fresh tiny denoiser (tiny ControlNets and LoRAs)
    # The side of the latent patches its pipelines pack into a token sequence (FLUX: 2, a 2×2 patch per
    # token, 4× the VAE's channels); 1: the pipelines' latents are the VAE's (channels, height, width).
    latent_patch: int = 1
    # Its img2img pipelines are told the output size (SD 3's and FLUX's make their default size, 1024², of any
    # input image unless told); False: they make the input image's size.
    img2img_size: bool = False
    # The job parameters its pipelines take as they are, when a job has them (T5's `max_sequence_length`).
    call_params: tuple[str, ...] = ()
    # Why its pipelines are given no negative prompt (a job's is ignored, with this as its warning); None:
    # they take one wherever the model runs with guidance.
    no_negative_prompt: str | None = None

    def pipeline_class(self, mode: str):
        """The diffusers class of `mode`'s pipeline."""
        import diffusers

        if mode not in self.pipelines:
            raise ValueError(f"{self.name} models have no {mode} pipeline")
        return getattr(diffusers, self.pipelines[mode])

    def class_names(self) -> set[str]:
        """Every pipeline class this family's models run as."""
        return set(self.pipelines.values())
