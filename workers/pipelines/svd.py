"""Stable Video Diffusion: one image in, `num_frames` frames out.

1. The input image goes in as PIL, so the pipeline resizes it to 224² for CLIP itself.
2. The UNet denoises all frames together; 3. the VAE decodes `decode_chunk_size` frames at a time.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from service.jobs.states import Stage
from workers.pipelines.base import WARMUP_COMMON, Output, TaskPipeline, input_image, pixels


class SVD(TaskPipeline):
    task = "svd"

    def plan(self, p):
        return [(Stage.DENOISE, p["steps"])]

    def default_size(self):
        return 1024, 576

    def warmup_params(self, width, height):
        return {**WARMUP_COMMON, "width": width, "height": height, "steps": 2,
                "num_frames": self.model.spec.num_frames or 14, "fps": 7, "motion_bucket_id": 127,
                "noise_aug_strength": 0.02, "min_guidance_scale": 1.0, "max_guidance_scale": 3.0,
                "decode_chunk_size": 8, "output_format": "mp4",
                "image": input_image(Image.new("RGB", (width, height), (127, 127, 127)))}

    def run(self, p, progress):
        progress.begin(Stage.DENOISE)
        frames = self.model.pipe(
            image=pixels(p["image"]), height=p["height"], width=p["width"], num_frames=p["num_frames"],
            num_inference_steps=p["steps"], fps=p["fps"], motion_bucket_id=p["motion_bucket_id"],
            noise_aug_strength=p["noise_aug_strength"], min_guidance_scale=p["min_guidance_scale"],
            max_guidance_scale=p["max_guidance_scale"], decode_chunk_size=p["decode_chunk_size"],
            generator=torch.Generator("cpu").manual_seed(p["seed"]), callback_on_step_end=progress.on_step_end,
            output_type="np",
        ).frames[0]
        return Output(frames=(np.clip(frames, 0, 1) * 255).round().astype(np.uint8))
