"""Live previews: a small picture of a running job's latents, made only while someone watches.

A watcher (an events stream with `?previews=true`, an AUTOMATIC1111 client polling `/progress`) sets
the job's `watched` flag in Redis and renews it while it watches; the progress report of each step
says whether the flag is set (service/jobs/protocol.py `report`), and the worker then renders the
latents of every `preview_every_steps`-th step (and of the first step it learns of a watcher) into a
WebP data URL, longest side at most `MAX_SIDE`, carried by that step's progress event.

Two decoders:
- `linear` (default): a channels×3 matrix and a bias per model family map the latent channels to RGB
  (each family file's `preview_factors`: the factors ComfyUI and AUTOMATIC1111 use for their cheap
  previews, fitted on real VAE decodes).
  No model, no download, a fraction of a millisecond; the tiny profile's random latents look like
  coloured noise, as real ones do in the first steps.
- `taesd`: a tiny autoencoder (TAESD for SD 1.x/2.x and SVD, TAESDXL for SDXL and Turbo, TAESD3 for SD 3,
  TAEF1 for FLUX.1: `AutoencoderTiny`, the last two of 16 latent channels) named by the model's
  `preview_decoder` in the models file: a faithful picture for a few milliseconds on a GPU. One made for
  other latents than the model's is refused when the model loads.

The latents of a sigma-parameterised scheduler (Euler and friends) carry the noise at its full scale;
they are divided by sqrt(sigma² + 1) first, as the UNet's input is, so that early previews are not
saturated. Flow matching (SD 3, FLUX: `flow_euler`, `flow_heun`) interpolates, x_t = (1-σ)·x0 + σ·noise:
its latents are at the data's scale at every step and are shown as they are. For SVD, the latents hold
every frame: the middle one is shown.

The SD 3 and FLUX VAEs also shift their latents (`shift_factor`): the pipelines hand the transformer
(vae latents - shift) × scale, and that is what ComfyUI's factors were fitted on and what it hands TAESD3
and TAEF1 for its previews (both see the sampler's latents, after `process_in`). So no family's latents
are rescaled before the linear map; a tiny autoencoder's own config says how a pipeline would scale them
for it, as for any VAE (`_decode_taesd`).

FLUX's transformer sees its latents packed: 2×2 patches of the latent image as a sequence
`(h/2 · w/2, channels·4)`, which is what its step callback hands over; `unpack` (the family's
`latent_patch`) makes them an image again, as `FluxPipeline._unpack_latents` does, in the job's shape.
"""

from __future__ import annotations

import base64
import io
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from workers.families import WorkerFamily

log = logging.getLogger("fresco.previews")

MAX_SIDE = 256  # api.md: a preview's longest side is at most this
WEBP_QUALITY = 60  # method 0, the fastest: a 128² preview encodes in about 1 ms on this CPU
def preview_size(width: int, height: int) -> tuple[int, int]:
    """The size of a decoded `width` × `height` preview once sent: the same shape, longest side ≤ MAX_SIDE."""
    scale = min(1.0, MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit(image: Image.Image) -> Image.Image:
    """`image` at most MAX_SIDE on its longest side (a training job's validation image as its preview)."""
    size = preview_size(image.width, image.height)
    return image if size == image.size else image.resize(size, Image.BILINEAR)


def to_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "WEBP", quality=WEBP_QUALITY, method=0)
    return "data:image/webp;base64," + base64.b64encode(buf.getvalue()).decode()


def denoised_scale(scheduler) -> float:
    """1 / sqrt(sigma² + 1) for a sigma-parameterised scheduler at its current step, else 1: a scheduler
    whose starting noise is at unit scale (DDIM's `init_noise_sigma` of 1; flow matching, which has none:
    its sigmas run from 1 to 0 and mix, not add, the noise) keeps its latents at the data's scale."""
    sigmas = getattr(scheduler, "sigmas", None)
    index = getattr(scheduler, "step_index", None)
    if sigmas is None or index is None or float(getattr(scheduler, "init_noise_sigma", 1.0)) <= 1.0:
        return 1.0
    sigma = float(sigmas[min(index, len(sigmas) - 1)])
    return 1.0 / (sigma * sigma + 1.0) ** 0.5


def packed_grid(patches: int, width: int, height: int) -> tuple[int, int]:
    """The (rows, columns) of patches a packed sequence of `patches` holds for a `width` × `height` image:
    the factorisation whose shape is nearest the image's. Exact when the sides are multiples of the
    patch's size in pixels (FLUX: 16), and right for an image denoised at another size of the same shape
    (a hires pass, an inpainted crop)."""
    target = math.log(max(1, width) / max(1, height))
    best = (1, patches)
    for rows in range(1, math.isqrt(patches) + 1):
        if patches % rows:
            continue
        for r, c in ((rows, patches // rows), (patches // rows, rows)):
            if abs(math.log(c / r) - target) < abs(math.log(best[1] / best[0]) - target):
                best = (r, c)
    return best


def unpack(latents: torch.Tensor, patch: int, width: int, height: int) -> torch.Tensor:
    """One image's packed latents `(patches, channels·patch²)` as `(channels, h, w)`: the inverse of
    `FluxPipeline._pack_latents`, for a `width` × `height` image (`packed_grid`)."""
    patches, packed = latents.shape
    rows, cols = packed_grid(patches, width, height)
    channels = packed // (patch * patch)
    grid = latents.reshape(rows, cols, channels, patch, patch).permute(2, 0, 3, 1, 4)
    return grid.reshape(channels, rows * patch, cols * patch)


@dataclass
class Previewer:
    """Renders one image's latents (channels × h × w) into a preview data URL."""

    family: WorkerFamily
    decoder: torch.nn.Module | None = None  # an AutoencoderTiny, or None: the linear projection

    @property
    def kind(self) -> str:
        return "taesd" if self.decoder is not None else "linear"

    def render(self, latents: torch.Tensor, scheduler=None, size: tuple[int, int] | None = None) -> str:
        """`latents`: one image's (channels, h, w), or one video's (frames, channels, h, w): its middle
        frame, or, for a family whose latents are packed (`latent_patch` > 1), one image's (patches,
        channels·patch²), unpacked for an image of `size` (width, height; None: square). The preview
        has the output's shape: one pixel per latent with the linear decoder (a 1024² SDXL image: 128²;
        the page scales it up), the decoder's own size with TAESD; either scaled down to a longest side
        of MAX_SIDE."""
        if latents.dim() == 4:
            latents = latents[latents.shape[0] // 2]
        elif latents.dim() == 2 and self.family.latent_patch > 1:
            latents = unpack(latents, self.family.latent_patch, *(size or (1, 1)))
        latents = latents.detach()
        if scheduler is not None:
            latents = latents * denoised_scale(scheduler)
        rgb = self._decode_taesd(latents) if self.decoder is not None else self._decode_linear(latents)
        pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        image = Image.fromarray(np.ascontiguousarray(pixels))
        target = preview_size(*image.size)
        if image.size != target:
            image = image.resize(target, Image.Resampling.BILINEAR)
        return to_data_url(image)

    def _decode_linear(self, latents: torch.Tensor) -> torch.Tensor:
        x = latents.float()
        channels = x.shape[0]
        factors, bias = self.family.preview_factors or ((), (0.0, 0.0, 0.0))
        weights = torch.tensor(factors or [[0.0] * 3], dtype=x.dtype, device=x.device)
        if channels != len(factors):  # latents the factors were not fitted for: their first 3 channels
            weights = torch.eye(channels, 3, dtype=x.dtype, device=x.device) * 0.5
        offset = torch.tensor(bias, dtype=x.dtype, device=x.device)[:, None, None]
        return torch.einsum("chw,cr->rhw", x, weights) + offset

    def _decode_taesd(self, latents: torch.Tensor) -> torch.Tensor:
        """As a pipeline decodes with the tiny autoencoder swapped in as its VAE (`pipe.vae = ...`, how
        madebyollin's TAESD, TAESDXL, TAESD3 and TAEF1 are meant to be used): its own config's
        `scaling_factor` and `shift_factor` undone first. TAESD's and TAESDXL's are 1 and 0 (they decode
        what the denoiser sees); whatever a 16-channel one says, this decodes as its pipeline would."""
        decoder = self.decoder
        param = next(decoder.parameters())
        config = decoder.config
        x = latents / config.scaling_factor + getattr(config, "shift_factor", 0.0)
        out = decoder.decode(x[None].to(param.device, param.dtype)).sample[0]
        return out.float()


def load_previewer(family: WorkerFamily, source: str | None, device: torch.device, dtype: torch.dtype) -> Previewer:
    """The model's previewer: linear, or the tiny autoencoder at `source` (a hub id or local directory)."""
    if not source:
        return Previewer(family)
    from diffusers import AutoencoderTiny

    decoder = AutoencoderTiny.from_pretrained(source, dtype=dtype, use_safetensors=True).to(device).eval()
    decoder.requires_grad_(False)
    channels, expected = decoder.config.latent_channels, len((family.preview_factors or ((),))[0])
    if expected and channels != expected:  # TAESDXL named for a FLUX model, say: refuse it at load
        raise ValueError(f"preview_decoder {source} decodes {channels}-channel latents; {family.name} models' "
                         f"have {expected} (TAESD3 for SD 3, TAEF1 for FLUX.1, TAESDXL for SDXL)")
    log.info("live previews of %s models decoded by the tiny autoencoder %s", family.name, source)
    return Previewer(family, decoder)
