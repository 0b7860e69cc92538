"""SDXL Turbo: 1 to 4 steps of Euler ancestral (trailing spacing), guidance off."""

from __future__ import annotations

from service.jobs.states import Stage
from workers.models import make_scheduler
from workers.pipelines.base import (WARMUP_COMMON, Output, TaskPipeline, batch_generators, generators,
                                    per_image, prompt_warnings, split)
from workers.pipelines.host_images import host_images


class Turbo(TaskPipeline):
    task = "turbo"

    def plan(self, p):
        return [(Stage.DENOISE, p["steps"])]

    def default_size(self):
        return 512, 512

    def warmup_params(self, width, height):
        return {**WARMUP_COMMON, "width": width, "height": height, "steps": 1, "guidance_scale": 0.0}

    def batch_key(self, p):
        # Guidance is always off and prompts go in as a list, so size and steps are all that must match.
        return ("turbo", p["width"], p["height"], p["steps"])

    def run(self, p, progress):
        pipe = self.model.pipe
        # 1. a fresh Euler-ancestral scheduler; 2. denoise and decode
        pipe.scheduler = make_scheduler("turbo", self.model.scheduler_config)
        progress.begin(Stage.DENOISE)
        images = host_images(pipe(
            prompt=p["prompt"], width=p["width"], height=p["height"], num_inference_steps=p["steps"],
            guidance_scale=0.0, num_images_per_prompt=p["num_images"],
            generator=generators(p["seed"], p["num_images"]), callback_on_step_end=progress.on_step_end,
            output_type="pt",
        ).images)
        return Output(images=images, warnings=prompt_warnings(pipe, prompt=p["prompt"]))

    def run_batch(self, items, progress):
        if len(items) == 1:
            return super().run_batch(items, progress)
        pipe, p = self.model.pipe, items[0]
        pipe.scheduler = make_scheduler("turbo", self.model.scheduler_config)
        progress.begin(Stage.DENOISE)
        images = host_images(pipe(
            prompt=per_image(items, lambda q: q["prompt"]), width=p["width"], height=p["height"],
            num_inference_steps=p["steps"], guidance_scale=0.0, num_images_per_prompt=1,
            generator=batch_generators(items), callback_on_step_end=progress.on_step_end, output_type="pt",
        ).images)
        return [Output(images=imgs, warnings=prompt_warnings(pipe, prompt=q["prompt"]))
                for imgs, q in zip(split(images, items), items)]
