"""SDXL base + refiner as an ensemble of experts.

1. The base denoises the first `refiner_switch` of the schedule and hands over latents.
2. The refiner (sharing the base's VAE and second text encoder) denoises the rest and decodes.
Without a refiner, the base runs the whole schedule and decodes.
"""

from __future__ import annotations

from workers.models import make_scheduler
from workers.pipelines.base import Output, TaskPipeline, generators, prompt_warnings


class SDXL(TaskPipeline):
    task = "sdxl"

    def _use_refiner(self, p: dict) -> bool:
        return bool(p.get("refiner")) and self.model.refiner is not None

    def plan(self, p):
        if not self._use_refiner(p):
            return [("base", p["steps"])]
        base = max(1, round(p["steps"] * p["refiner_switch"]))
        return [("base", base), ("refiner", max(1, p["steps"] - base))]

    def run(self, p, image, progress):
        base = self.model.pipe
        # 1. fresh schedulers (they keep state) and one generator per image
        base.scheduler = make_scheduler(p["scheduler"], self.model.scheduler_config)
        gens = generators(p["seed"], p["num_images"])
        common = dict(
            prompt=p["prompt"], negative_prompt=p["negative_prompt"] or None,
            num_inference_steps=p["steps"], guidance_scale=p["guidance_scale"],
            num_images_per_prompt=p["num_images"], generator=gens,
            callback_on_step_end=progress.on_step_end,
        )
        warnings = prompt_warnings(base, prompt=p["prompt"], negative_prompt=p["negative_prompt"])
        # 2. base
        progress.begin("base")
        if not self._use_refiner(p):
            images = base(**common, width=p["width"], height=p["height"]).images
            return Output(images=images, warnings=warnings)
        switch = float(p["refiner_switch"])  # a numpy float would be ignored silently
        latents = base(**common, width=p["width"], height=p["height"], denoising_end=switch,
                       output_type="latent").images
        # 3. refiner, from the handed-over latents
        refiner = self.model.refiner
        refiner.scheduler = make_scheduler(p["scheduler"], self.model.refiner_scheduler_config)
        progress.begin("refiner")
        images = refiner(**common, image=latents, denoising_start=switch, aesthetic_score=6.0,
                         negative_aesthetic_score=2.5).images
        return Output(images=images, warnings=warnings)
