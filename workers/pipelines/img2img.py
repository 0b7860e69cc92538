"""img2img on an SD, SDXL base or Turbo model: `from_pipe`, so no second copy of the weights.

1. The input image is resized to the requested size.
2. `int(steps × strength)` denoising steps run from the noised input, then the VAE decodes; with
   `control`, as the model's ControlNet img2img pipeline (workers/control.py), same modules.
A batch of compatible jobs runs as one call, with an input image, prompt and generator per output image.
"""

from __future__ import annotations

from PIL import Image

from service.jobs.states import Stage
from service.tasks import TASKS
from workers.control import control_key
from workers.models import make_scheduler
from workers.pipelines.base import (WARMUP_COMMON, Output, TaskPipeline, batch_generators, call_key, img2img_size,
                                    input_image, per_image, pixels, prompt_args, split, text_warnings, warmup_text)
from workers.pipelines.host_images import host_images


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
        return {**WARMUP_COMMON, "width": width, "height": height, "steps": 2, "strength": 0.5,
                **warmup_text(self.model), "image": input_image(Image.new("RGB", (width, height), (127, 127, 127)))}

    def batch_key(self, p):
        guided = self.model.spec.guidance  # Turbo, FLUX.1 schnell: no guidance, no negative prompt
        return ("img2img", p["width"], p["height"], p["steps"], p["strength"],
                p["guidance_scale"] if guided else None, p["scheduler"],
                bool(p.get("negative_prompt")) if guided else False, control_key(p), call_key(self.model, p))

    def run(self, p, progress):
        return self.run_batch([p], progress)[0]

    def run_batch(self, items, progress):
        p = items[0]
        pipe, control = self.pipe, {}
        if p.get("control"):
            pipe = self.model.controls.pipeline(TASKS[self.task].mode, tuple(c["model"] for c in p["control"]))
            control = self.model.controls.arguments(items, (p["width"], p["height"]), image_key="control_image")
        kind = self.model.spec.kind_row
        guided = self.model.spec.guidance
        pipe.scheduler = make_scheduler(kind.scheduler if kind.own_scheduler else p["scheduler"],
                                        self.model.scheduler_config)
        # 1. the inputs at the output size
        size = (p["width"], p["height"])

        def source(q):
            image = pixels(q["image"])
            return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)

        inputs = prompt_args(self.model, items)
        inputs["image"] = source(p) if len(items) == 1 else per_image(items, source)
        # 2. denoise from the noised inputs, decode
        progress.begin(Stage.DENOISE)
        images = host_images(pipe(
            **inputs, **control, **img2img_size(self.model, *size), strength=p["strength"],
            num_inference_steps=p["steps"],
            guidance_scale=p["guidance_scale"] if guided else 0.0,
            generator=batch_generators(items), callback_on_step_end=progress.on_step_end, output_type="pt",
        ).images)
        return [Output(images=imgs, warnings=text_warnings(self.model, pipe, q))
                for imgs, q in zip(split(images, items), items)]
