"""The training set, prepared once: images fitted to aspect-ratio buckets, captions written as the model
will be prompted, latents encoded by the VAE once (the VAE then sits idle during steps), and the order
batches come in.

Buckets (kohya's scheme): sizes with sides multiples of 64 from resolution/2 to resolution*2 whose area is
at most resolution², each image going to the bucket whose aspect ratio is nearest its own (in log scale),
resized to cover it and centre-cropped; a batch holds images of one bucket. Without buckets every image
is centre-cropped square. SDXL's size conditioning is recorded per image as its pipeline builds it:
(original height, width, crop top, left, target height, width).

The batch order is a pure function of (seed, epoch): resuming at (epoch, position) replays exactly the
batches an uninterrupted run would have drawn, and no sampler state needs saving beyond those two ints.
Every batch is full (a bucket's last one wraps around to its first images), so that accelerate can shard
the batches over data-parallel processes evenly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from workers.training import seeds

STEP = 64  # sides are multiples of this (the VAE's 8 × the UNets' 8)


def bucket_sizes(resolution: int) -> list[tuple[int, int]]:
    """(width, height) of every bucket for `resolution`: sides multiples of 64 within [res/2, 2·res],
    area at most res², the widest height kept for each width."""
    lo = max(STEP, resolution // 2 // STEP * STEP)
    hi = resolution * 2
    area = resolution * resolution
    sizes = set()
    for w in range(lo, hi + 1, STEP):
        h = min(hi, area // w // STEP * STEP)
        if h >= lo:
            sizes.add((w, h))
            sizes.add((h, w))
    return sorted(sizes)


def nearest_bucket(width: int, height: int, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to width/height (in log scale; ties: the larger area)."""
    ratio = math.log(width / height)
    return min(sizes, key=lambda s: (abs(math.log(s[0] / s[1]) - ratio), -s[0] * s[1]))


@dataclass
class Fitted:
    pixels: torch.Tensor  # [3, h, w] in [-1, 1]
    original: tuple[int, int]  # (height, width) of the image as given
    crop: tuple[int, int]  # (top, left) of the crop, in the resized image
    size: tuple[int, int]  # (height, width) trained at

    @property
    def time_ids(self) -> torch.Tensor:
        """SDXL's size conditioning: original size + crop top-left + target size."""
        return torch.tensor([*self.original, *self.crop, *self.size], dtype=torch.float32)


def fit(image, resolution: int, buckets: bool) -> Fitted:
    """`image` (PIL) resized to cover its bucket (or the resolution² square) and centre-cropped to it."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image).convert("RGB")  # as a phone photo is shown, not as stored
    w, h = image.size
    bw, bh = nearest_bucket(w, h, bucket_sizes(resolution)) if buckets else (resolution, resolution)
    scale = max(bw / w, bh / h)
    rw, rh = max(bw, math.ceil(w * scale - 1e-6)), max(bh, math.ceil(h * scale - 1e-6))
    resized = image.resize((rw, rh), Image.Resampling.BICUBIC) if (rw, rh) != (w, h) else image
    left, top = (rw - bw) // 2, (rh - bh) // 2
    cropped = resized.crop((left, top, left + bw, top + bh))
    pixels = torch.frombuffer(bytearray(cropped.tobytes()), dtype=torch.uint8).reshape(bh, bw, 3)
    pixels = pixels.permute(2, 0, 1).float() / 127.5 - 1.0
    return Fitted(pixels, (h, w), (top, left), (bh, bw))


def compose_caption(caption: str, trigger: str) -> str:
    """`trigger, caption` (the trigger alone for an empty caption); a caption already holding it is kept."""
    caption = (caption or "").strip()
    trigger = (trigger or "").strip()
    if not trigger or trigger in caption:
        return caption or trigger
    return f"{trigger}, {caption}" if caption else trigger


def expand_tokens(caption: str, tokens: list[str]) -> str:
    """A multi-vector token written out as its vectors' tokens, as diffusers' `maybe_convert_prompt` does."""
    if len(tokens) > 1 and tokens[0] in caption:
        caption = caption.replace(tokens[0], " ".join(tokens))
    return caption


@torch.no_grad()
def encode_latents(vae, fitted: list[Fitted], device, chunk: int = 4) -> list[torch.Tensor]:
    """Each image's latents ([4, h/8, w/8], float32, on the CPU): the VAE's mean, scaled as the UNet sees
    latents. Images of one size go through together; fp16 VAEs that ask for it run in float32."""
    dtype = vae.dtype
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    out: list[torch.Tensor | None] = [None] * len(fitted)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, f in enumerate(fitted):
        by_size.setdefault(f.size, []).append(i)
    try:
        for indices in by_size.values():
            for start in range(0, len(indices), chunk):
                part = indices[start:start + chunk]
                pixels = torch.stack([fitted[i].pixels for i in part]).to(device, vae.dtype)
                latents = (vae.encode(pixels).latent_dist.mean.float() - shift) * scale
                for i, latent in zip(part, latents):
                    out[i] = latent.cpu()
    finally:
        if upcast:
            vae.to(dtype)
    return out  # type: ignore[return-value]


class LatentSet(torch.utils.data.Dataset):
    """The prepared examples: latents, caption index (into the caption list), SDXL time ids."""

    def __init__(self, latents: list[torch.Tensor], captions: list[int], time_ids: list[torch.Tensor]):
        self.latents, self.captions, self.time_ids = latents, captions, time_ids

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict:
        return {"latents": self.latents[i], "caption": self.captions[i], "time_ids": self.time_ids[i]}

    def size_of(self, i: int) -> tuple[int, int]:
        return tuple(self.latents[i].shape[-2:])


class BucketBatches(torch.utils.data.Sampler):
    """Batches of `batch_size` indices of one bucket each, in an order drawn from (seed, epoch) alone.
    `epoch` is set by the trainer before each pass (not accelerate's `set_epoch`: its pass counter starts
    at 0 again in a resumed run)."""

    drop_last = False

    def __init__(self, dataset: LatentSet, batch_size: int, seed: int):
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        groups: dict[tuple[int, int], list[int]] = {}
        for i in range(len(dataset)):
            groups.setdefault(dataset.size_of(i), []).append(i)
        self.groups = [groups[k] for k in sorted(groups)]

    def __len__(self) -> int:
        return sum(math.ceil(len(g) / self.batch_size) for g in self.groups)

    def __iter__(self):
        generator = seeds.generator(self.seed, seeds.BATCH_ORDER, self.epoch)
        batches = []
        for group in self.groups:
            order = [group[i] for i in torch.randperm(len(group), generator=generator).tolist()]
            count = math.ceil(len(order) / self.batch_size)
            padded = (order * math.ceil(count * self.batch_size / len(order)))[:count * self.batch_size]
            batches += [padded[i:i + self.batch_size] for i in range(0, len(padded), self.batch_size)]
        for i in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[i]
