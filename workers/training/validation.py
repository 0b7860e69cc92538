"""Validation images: the pipeline being trained (its modules carry the adapter and the new tokens, which
are active) run on the validation prompt at the training resolution, the trained modules in eval mode
for the while and under no_grad, image i from a CPU generator seeded `seed + i`: the same images for the
same weights on any device, and no draw from the training's random streams."""

from __future__ import annotations

import torch

from workers.training import seeds


def images(pipe, config, modules: list, autocast) -> list:
    """`config.validation_images` PIL images of `config.validation_prompt`; `modules`: the trained ones,
    back in train mode afterwards; `autocast`: the accelerator's autocast context factory."""
    for module in modules:
        module.eval()
    try:
        generators = [seeds.generator(config.seed + i) for i in range(config.validation_images)]
        with torch.no_grad(), autocast():
            out = pipe(prompt=config.validation_prompt, num_inference_steps=config.validation_steps,
                       height=config.resolution, width=config.resolution,
                       num_images_per_prompt=config.validation_images, generator=generators, output_type="pil")
        return list(out.images)
    finally:
        for module in modules:
            module.train()
