"""SDXL base + refiner as an ensemble of experts.

1. The base denoises the first `refiner_switch` of the schedule and hands over latents; with `control`,
   the base stage runs as the ControlNet pipeline built on the same modules (workers/control.py).
2. The refiner (sharing the base's VAE and second text encoder) denoises the rest and decodes.
Without a refiner, the base runs the whole schedule and decodes.
3. With `hires`, the last stage hands its latents (or images) to the hires pass (workers/hires.py): upscaled
   to the final size, refined by an img2img pass on the base's modules, decoded.
A batch of compatible jobs runs as one call of each, with a prompt, negative prompt and generator per image.
"""

from __future__ import annotations

from service.jobs.states import Stage
from service.tasks import TASKS
from workers import hires
from workers.control import control_key
from workers.loras import no_lora_in
from workers.models import make_scheduler
from workers.pipelines.base import (WARMUP_COMMON, Output, TaskPipeline, batch_generators, call_key, prompt_args, split,
                                    text_warnings)
from workers.pipelines.host_images import host_images


class SDXL(TaskPipeline):
    task = "sdxl"
    base_stage = Stage.BASE  # what progress calls the first stage

    def _use_refiner(self, p: dict) -> bool:
        return bool(p.get("refiner")) and self.model.refiner is not None

    def plan(self, p):
        if not self._use_refiner(p):
            stages = [(self.base_stage, p["steps"])]
        else:
            base = max(1, round(p["steps"] * p["refiner_switch"]))
            stages = [(Stage.BASE, base), (Stage.REFINER, max(1, p["steps"] - base))]
        if p.get("hires"):
            stages.append((Stage.HIRES, hires.steps(p["hires"])))
        return stages

    def default_size(self):
        return 1024, 1024

    def warmup_params(self, width, height):
        return {**WARMUP_COMMON, "width": width, "height": height, "steps": 4, "guidance_scale": 5.0,
                "scheduler": "euler", "refiner": self.model.refiner is not None, "refiner_switch": 0.75}

    def batch_key(self, p):
        refiner = self._use_refiner(p)
        return (self.task, p["width"], p["height"], p["steps"], p["guidance_scale"], p["scheduler"], refiner,
                p["refiner_switch"] if refiner else None, bool(p.get("negative_prompt")), control_key(p),
                hires.key(p), call_key(self.model, p))

    def run(self, p, progress):
        return self.run_batch([p], progress)[0]

    def _base(self, items) -> tuple[object, dict]:
        """The pipeline the base stage runs (the model's own, or its control pipeline) and its control arguments."""
        p = items[0]
        if not p.get("control"):
            return self.model.pipe, {}
        names = tuple(c["model"] for c in p["control"])
        pipe = self.model.controls.pipeline(TASKS[self.task].mode, names)
        return pipe, self.model.controls.arguments(items, (p["width"], p["height"]))

    def run_batch(self, items, progress):
        p = items[0]
        base, control = self._base(items)
        # 1. fresh schedulers (they keep state) and one generator per image
        base.scheduler = make_scheduler(p["scheduler"], self.model.scheduler_config)
        prompts = prompt_args(self.model, items)  # one job: its prompt once, `num_images` images of it
        common = dict(**prompts, num_inference_steps=p["steps"], guidance_scale=p["guidance_scale"],
                      generator=batch_generators(items), callback_on_step_end=progress.on_step_end)
        warnings = [text_warnings(self.model, base, q) for q in items]
        # the last stage decodes, unless a hires pass follows (then it hands over latents, or decoded images)
        last = "latent" if p.get("hires") and p["hires"]["upscaler"] == hires.LATENT else "pt"
        # 2. base
        progress.begin(self.base_stage)
        if not self._use_refiner(p):
            out = base(**common, **control, width=p["width"], height=p["height"], output_type=last).images
        else:
            switch = float(p["refiner_switch"])  # a numpy float would be ignored silently
            latents = base(**common, **control, width=p["width"], height=p["height"], denoising_end=switch,
                           output_type="latent").images
            # 3. refiner, from the handed-over latents
            refiner = self.model.refiner
            refiner.scheduler = make_scheduler(p["scheduler"], self.model.refiner_scheduler_config)
            progress.begin(Stage.REFINER)
            with no_lora_in(refiner.text_encoder_2):  # shared with the base; the refiner gets no base LoRA
                out = refiner(**common, image=latents, denoising_start=switch, aesthetic_score=6.0,
                              negative_aesthetic_score=2.5, output_type=last).images
        # 4. hires: upscaled, refined at the final size (no ControlNet: the base stage's alone)
        if p.get("hires"):
            out = hires.refine(self.model, items, out, prompts, progress)
        images = host_images(out)
        return [Output(images=imgs, warnings=w) for imgs, w in zip(split(images, items), warnings)]
