"""img2img on an SDXL base or Turbo model: `from_pipe`, so no second copy of the weights.

1. The input image is resized to the requested size.
2. `int(steps × strength)` denoising steps run from the noised input, then the VAE decodes.
"""

from __future__ import annotations

from PIL import Image

from workers.models import make_scheduler
from workers.pipelines.base import Output, TaskPipeline, generators, prompt_warnings


class Img2Img(TaskPipeline):
    task = "img2img"

    def __init__(self, model):
        super().__init__(model)
        self.pipe = model.img2img()  # built at load time, not on the first request

    def plan(self, p):
        return [("denoise", max(1, int(p["steps"] * p["strength"])))]

    def run(self, p, image, progress):
        pipe = self.pipe
        turbo = self.model.spec.kind == "turbo"
        pipe.scheduler = make_scheduler("turbo" if turbo else p["scheduler"], self.model.scheduler_config)
        # 1. the input at the output size
        size = (p["width"], p["height"])
        if image.size != size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        # 2. denoise from the noised input, decode
        progress.begin("denoise")
        images = pipe(
            prompt=p["prompt"], negative_prompt=(p.get("negative_prompt") or None) if not turbo else None,
            image=image, strength=p["strength"], num_inference_steps=p["steps"],
            guidance_scale=0.0 if turbo else p["guidance_scale"], num_images_per_prompt=p["num_images"],
            generator=generators(p["seed"], p["num_images"]), callback_on_step_end=progress.on_step_end,
        ).images
        return Output(images=images, warnings=prompt_warnings(pipe, prompt=p["prompt"],
                                                              negative_prompt=p.get("negative_prompt")))
