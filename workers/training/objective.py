"""One micro-batch's loss: the denoising objective the model was trained with (epsilon or v-prediction,
read from the pipeline's scheduler config), on DDPM's training noise schedule, with caption dropout,
noise offset and min-SNR weighting as options.

Every random draw of a micro-batch (which captions drop, the timesteps, the noise) comes from a CPU
generator seeded from (seed, process, micro-batch number): a run resumed at any step draws exactly what
the uninterrupted run drew, on any device, with nothing to save, and data-parallel processes draw
differently from each other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.training import seeds


def micro_generator(seed: int, process: int, micro_step: int) -> torch.Generator:
    return seeds.generator(seed, seeds.MICRO_BATCH, process, micro_step)


def draw(generator: torch.Generator, latents: torch.Tensor, caption_dropout: float, noise_offset: float,
         timesteps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dropped [B] bool, timesteps [B], noise like latents), all drawn in a fixed order on the CPU."""
    b, c = latents.shape[:2]
    dropped = torch.rand(b, generator=generator) < caption_dropout
    t = torch.randint(0, timesteps, (b,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    offset = torch.randn((b, c, 1, 1), generator=generator)
    if noise_offset:
        noise = noise + noise_offset * offset
    return dropped, t, noise


def loss(scheduler, prediction: str, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
         predict, min_snr_gamma: float | None) -> torch.Tensor:
    """The mean (min-SNR-weighted) MSE of `predict(noisy_latents, timesteps)` against the target."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if prediction == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    pred = predict(noisy, timesteps)
    if min_snr_gamma is None:
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    weights = torch.clamp(snr, max=min_snr_gamma)
    weights = weights / (snr + 1) if prediction == "v_prediction" else weights / snr
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights).mean()
