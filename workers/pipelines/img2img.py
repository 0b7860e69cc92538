"""img2img on an SD, SDXL base or Turbo model: `from_pipe`, so no second copy of the weights.

1. The input image is resized to the requested size.
2. `int(steps × strength)` denoising steps run from the noised input, then the VAE decodes; with
   `control`, as the model's ControlNet img2img pipeline (workers/control.py), same modules.
A batch of compatible jobs runs as one call, with an input image, prompt and generator per output image.
"""

from __future__ import annotations

from PIL import Image

from service.jobs.states import Stage
from workers.control import control_key
from workers.models import make_scheduler
from workers.pipelines.base import (WARMUP_COMMON, Output, TaskPipeline, batch_generators, negatives,
                                    per_image, prompt_warnings, split)


class Img2Img(TaskPipeline):
    task = "img2img"

    def __init__(self, model):
        super().__init__(model)
        self.pipe = model.img2img()  # built at load time, not on the first request

    def plan(self, p):
        return [(Stage.DENOISE, max(1, int(p["steps"] * p["strength"])))]

    def default_size(self):
        return self.model.spec.size

    def warmup_params(self, width, height):
        turbo = self.model.spec.kind == "turbo"
        return {**WARMUP_COMMON, "width": width, "height": height, "steps": 2, "strength": 0.5,
                "guidance_scale": self.model.spec.defaults()["guidance_scale"],
                "scheduler": "turbo" if turbo else "euler"}

    def batch_key(self, p):
        turbo = self.model.spec.kind == "turbo"
        return ("img2img", p["width"], p["height"], p["steps"], p["strength"],
                None if turbo else p["guidance_scale"], p["scheduler"],
                False if turbo else bool(p.get("negative_prompt")), control_key(p))

    def run(self, p, image, progress):
        return self.run_batch([(p, image)], progress)[0]

    def run_batch(self, items, progress):
        p = items[0][0]
        pipe, control = self.pipe, {}
        if p.get("control"):
            pipe = self.model.controls.pipeline("img2img", tuple(c["model"] for c in p["control"]))
            control = self.model.controls.arguments(items, (p["width"], p["height"]), image_key="control_image")
        turbo = self.model.spec.kind == "turbo"
        pipe.scheduler = make_scheduler("turbo" if turbo else p["scheduler"], self.model.scheduler_config)
        # 1. the inputs at the output size
        size = (p["width"], p["height"])
        items = [(q, image if image.size == size else image.resize(size, Image.Resampling.LANCZOS))
                 for q, image in items]
        if len(items) == 1:
            image = items[0][1]
            inputs = dict(prompt=p["prompt"], negative_prompt=(p.get("negative_prompt") or None) if not turbo else None,
                          image=image, num_images_per_prompt=p["num_images"])
        else:
            inputs = dict(prompt=per_image(items, lambda q, _: q["prompt"]),
                          negative_prompt=negatives(items) if not turbo else None,
                          image=per_image(items, lambda _, image: image), num_images_per_prompt=1)
        # 2. denoise from the noised inputs, decode
        progress.begin(Stage.DENOISE)
        images = pipe(
            **inputs, **control, strength=p["strength"], num_inference_steps=p["steps"],
            guidance_scale=0.0 if turbo else p["guidance_scale"],
            generator=batch_generators(items), callback_on_step_end=progress.on_step_end,
        ).images
        return [Output(images=imgs, warnings=prompt_warnings(pipe, prompt=q["prompt"],
                                                             negative_prompt=q.get("negative_prompt")))
                for imgs, (q, _) in zip(split(images, items), items)]
