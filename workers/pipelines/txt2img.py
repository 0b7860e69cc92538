"""txt2img: text-to-image on any SD 1.x/2.x or SDXL model, the SDXL one without its refiner.

The SDXL task's base stage, on the model's own pipeline class (StableDiffusionPipeline for `sd` models,
PAI-Diffusion's Chinese ones included: their tokenizer is the pipeline's), with the model's native size
and its family's guidance as defaults (resolved by the API), ControlNets where the request has them, and
`hires` (workers/hires.py) as the SDXL task's.
"""

from __future__ import annotations

from service.jobs.states import Stage
from workers.pipelines.base import WARMUP_COMMON, warmup_text
from workers.pipelines.sdxl import SDXL


class Txt2Img(SDXL):
    task = "txt2img"
    base_stage = Stage.DENOISE

    def _use_refiner(self, p: dict) -> bool:
        return False

    def default_size(self):
        return self.model.spec.size

    def warmup_params(self, width, height):
        return {**WARMUP_COMMON, "width": width, "height": height, "steps": 2, **warmup_text(self.model)}
