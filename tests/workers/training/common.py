"""What the training tests share: synthetic training images (solid shapes), a fixed-noise denoising loss
that says whether a model fits them, and a fixed-seed image to see whether weights changed an output."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

# (colour, shape, size, caption)
SHAPES = [((220, 40, 40), "circle", (64, 64), "a red circle"),
          ((40, 60, 220), "square", (64, 64), "a blue square"),
          ((40, 200, 60), "circle", (64, 64), "a green circle"),
          ((230, 200, 40), "square", (128, 64), "a wide yellow square")]


def shape_image(colour, kind: str, size=(64, 64)) -> Image.Image:
    image = Image.new("RGB", size, (16, 16, 16))
    draw = ImageDraw.Draw(image)
    box = (size[0] // 5, size[1] // 5, size[0] - size[0] // 5, size[1] - size[1] // 5)
    (draw.ellipse if kind == "circle" else draw.rectangle)(box, fill=colour)
    return image


def examples(count: int = 3, captions: list[str] | None = None) -> list[tuple[Image.Image, str]]:
    out = [(shape_image(c, k, s), caption) for c, k, s, caption in SHAPES[:count]]
    if captions is not None:
        out = [(image, caption) for (image, _), caption in zip(out, captions)]
    return out


@torch.no_grad()
def denoise_loss(pipe, items: list[tuple[Image.Image, str]], xl: bool = False,
                 timesteps=(100, 250, 400, 550, 700, 850)) -> float:
    """The mean noise-prediction error of `pipe` on `items` (64×64 images) at fixed timesteps and noise,
    computed with the pipeline's own prompt encoding and VAE: lower means the model fits them better."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(1234)
    total, count = 0.0, 0
    for image, caption in items:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.float32))
        pixels = (pixels.permute(2, 0, 1)[None] / 127.5 - 1.0)
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        extra = {}
        if xl:
            embeds, _, pooled, _ = pipe.encode_prompt(caption, device="cpu", num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
            extra["added_cond_kwargs"] = {"text_embeds": pooled,
                                          "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}
        else:
            embeds, _ = pipe.encode_prompt(caption, device="cpu", num_images_per_prompt=1,
                                           do_classifier_free_guidance=False)
        for t in timesteps:
            noise = torch.randn(latents.shape, generator=generator)
            step = torch.tensor([t])
            noisy = scheduler.add_noise(latents, noise, step)
            pred = pipe.unet(noisy, step, encoder_hidden_states=embeds, **extra).sample
            total += torch.nn.functional.mse_loss(pred, noise).item()
            count += 1
    return total / count


def image(pipe, prompt: str, size: int = 64, steps: int = 2) -> np.ndarray:
    """The pipeline's image for `prompt` from a fixed seed, as float pixels."""
    out = pipe(prompt, num_inference_steps=steps, height=size, width=size, output_type="np",
               generator=torch.Generator().manual_seed(7))
    return out.images[0]
