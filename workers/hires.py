"""`hires` on txt2img and sdxl (AUTOMATIC1111's hires fix): the image made at width × height is upscaled to
the final size and refined there by an img2img pass, on the model's resident modules (`from_pipe`: no
second copy of the weights). `params["hires"]` is resolved by the API (service/api/rules.py `hires`):
scale, upscaler, strength, steps, and the final width and height (sides × scale, floored to multiples of 8;
of 16 for SD 3 and FLUX, whose pipelines take no other sizes).

1. Upscale. `latent`: the last stage (base, or refiner) hands over its latents, resized bilinearly to the
   final size's latent grid (A1111's "Latent"); diffusers' img2img takes latents of the VAE's channels as
   its init latents, so no VAE round trip (FLUX's packed latents are unpacked first: `unpacked`).
   `lanczos` or an upscaler's name: the last stage decodes, the upscaler (workers/upscalers.py, `lanczos`
   included) upscales each image by the factor, and Lanczos resizes it to the final size where rounding
   differs; the img2img pass encodes it.
2. Refine: int(steps × strength) steps with the job's prompts, guidance and scheduler, its LoRAs active (the
   same modules), no ControlNet (that is the base stage's), and fresh generators from the job's seeds, so
   a seed reproduces its image, alone or in a batch.
"""

from __future__ import annotations

from typing import Hashable

import torch
from PIL import Image

from service.catalog import Catalog, ModelSpec
from service.jobs.states import Stage
from workers.models import make_scheduler
from workers.pipelines.base import batch_generators, img2img_size
from workers.pipelines.host_images import host_images

LATENT = "latent"  # the upscaler that works on latents, not pixels: no model, no decode


def steps(hires: dict) -> int:
    """The denoising steps the img2img pass runs (what the job's plan expects)."""
    return max(1, int(hires["steps"] * hires["strength"]))


def key(params: dict) -> Hashable | None:
    """The job's hires settings for its batch key: jobs batch only with jobs of the same (or none)."""
    hires = params.get("hires")
    return None if not hires else tuple(sorted(hires.items()))


def load_upscalers(catalog: Catalog, models: dict) -> None:
    """Give each resident model (`models`: name -> LoadedModel) the catalogue's upscalers, by name: the ones
    a hires pass may name (each loads on first use, once per process: workers/upscalers.py)."""
    specs = {name: catalog.spec(name) for name in catalog.models_for("upscale")}
    for model in models.values():
        model.upscalers = specs


def upscaler_spec(model, name: str) -> ModelSpec:
    """The upscaler `name` of the model's catalogue (the built-in `lanczos` is in every one)."""
    spec = model.upscalers.get(name)
    if spec is None:
        raise ValueError(f"hires: this worker has no upscaler {name!r}")
    return spec


def unpacked(latents: torch.Tensor, patch: int, width: int, height: int, vae_scale: int) -> torch.Tensor:
    """A batch of latents as images (batch, channels, h, w): FLUX's pipelines hand over their latents packed,
    a token per `patch`×`patch` patch (batch, h/2 · w/2, channels · 4), and take image-shaped ones as an
    img2img start (the inverse of `FluxPipeline._pack_latents`). `patch` 1: already images."""
    if patch == 1:
        return latents
    batch, _, packed = latents.shape
    rows, cols = height // (vae_scale * patch), width // (vae_scale * patch)
    channels = packed // (patch * patch)
    grid = latents.view(batch, rows, cols, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(batch, channels, rows * patch, cols * patch)


def upscale_latents(latents: torch.Tensor, width: int, height: int, vae_scale: int) -> torch.Tensor:
    """Latents resized bilinearly to the latent grid of width × height (A1111's "Latent": no antialias)."""
    size = (height // vae_scale, width // vae_scale)
    return torch.nn.functional.interpolate(latents, size=size, mode="bilinear", antialias=False)


def upscale_images(images, hires: dict, spec: ModelSpec) -> list[Image.Image]:
    """Each image upscaled by the factor with the upscaler, then resized to exactly the final size."""
    from workers.upscalers import upscaler_for

    upscaler = upscaler_for(spec)
    size = (hires["width"], hires["height"])
    out = []
    for image in images:
        image = upscaler.upscale(image, hires["scale"])
        out.append(image if image.size == size else image.resize(size, Image.Resampling.LANCZOS))
    return out


def refine(model, items: list[dict], first, prompts: dict, progress) -> torch.Tensor:
    """The hires pass of a batch of jobs with the same hires settings. `first`: the last stage's output,
    latents (`latent`) or decoded images (`output_type="pt"`); `prompts`: its prompt, negative prompt and
    images per prompt. The final images, decoded (`output_type="pt"`)."""
    p = items[0]
    hires = p["hires"]
    pipe = model.img2img()  # the model's own modules: LoRAs stay active
    pipe.scheduler = make_scheduler(p["scheduler"], model.scheduler_config)
    if hires["upscaler"] == LATENT:
        latents = unpacked(first, model.family.latent_patch, p["width"], p["height"], pipe.vae_scale_factor)
        image = upscale_latents(latents, hires["width"], hires["height"], pipe.vae_scale_factor)
    else:
        image = upscale_images(host_images(first), hires, upscaler_spec(model, hires["upscaler"]))
    progress.begin(Stage.HIRES)
    size = img2img_size(model, hires["width"], hires["height"])
    return pipe(**prompts, image=image, **size, strength=float(hires["strength"]), num_inference_steps=hires["steps"],
                guidance_scale=p["guidance_scale"], generator=batch_generators(items),
                callback_on_step_end=progress.on_step_end, output_type="pt").images
