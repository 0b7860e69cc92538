"""The family table, worker side: what a worker needs to know of each model family, one file each.

A family (service/families.py: the kinds of one architecture) says here, following diffusers'
`AUTO_TEXT2IMAGE/IMAGE2IMAGE/INPAINT_PIPELINES_MAPPING`, which pipeline class runs each mode (a task
row's `mode`: txt2img, img2img, img2vid, and ControlNet's `control:<mode>`), the class a refiner loads
as, the options pipelines are built with, its denoiser (`unet`, or `transformer` for the families whose
denoiser is one), its text encoders and tokenizers and the key each one's vectors have in an embedding
file, the linear factors that preview its latents (a row per latent channel), the blocks regional
compilation compiles, the tiny profile's builder and the full-size architecture the deploy docs size.
Loading, adapters, ControlNets, previews and execution-device pinning read it; none names a family.
"""

from __future__ import annotations

from service.catalog import ModelSpec
from workers.families import flux, sd, sd3, sdxl, svd
from workers.families.base import TextEncoder, WorkerFamily

FAMILIES: dict[str, WorkerFamily] = {f.name: f for f in (sd.FAMILY, sdxl.FAMILY, sd3.FAMILY, flux.FAMILY, svd.FAMILY)}

__all__ = ["FAMILIES", "TextEncoder", "WorkerFamily", "family_of"]


def family_of(spec: ModelSpec) -> WorkerFamily:
    return FAMILIES[spec.family]
