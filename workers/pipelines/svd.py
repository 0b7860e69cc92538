"""Stable Video Diffusion: one image in, `num_frames` frames out.

1. The input image goes in as PIL, so the pipeline resizes it to 224² for CLIP itself.
2. The UNet denoises all frames together; 3. the VAE decodes `decode_chunk_size` frames at a time.
"""

from __future__ import annotations

import numpy as np
import torch

from workers.pipelines.base import Output, TaskPipeline


class SVD(TaskPipeline):
    task = "svd"

    def plan(self, p):
        return [("denoise", p["steps"])]

    def run(self, p, image, progress):
        progress.begin("denoise")
        frames = self.model.pipe(
            image=image, height=p["height"], width=p["width"], num_frames=p["num_frames"],
            num_inference_steps=p["steps"], fps=p["fps"], motion_bucket_id=p["motion_bucket_id"],
            noise_aug_strength=p["noise_aug_strength"], min_guidance_scale=p["min_guidance_scale"],
            max_guidance_scale=p["max_guidance_scale"], decode_chunk_size=p["decode_chunk_size"],
            generator=torch.Generator("cpu").manual_seed(p["seed"]), callback_on_step_end=progress.on_step_end,
            output_type="np",
        ).frames[0]
        return Output(frames=(np.clip(frames, 0, 1) * 255).round().astype(np.uint8))
