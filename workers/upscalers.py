"""Upscalers: the `upscale` task's models (workers/pipelines/upscale.py) and a hires pass's pixel upscalers
(workers/hires.py), by catalogue spec (the models file's `upscalers:` section, kind `upscaler`).

- `lanczos` (built in): one Pillow Lanczos resize, any factor, no weights.
- A weights file (`.safetensors`; a pickle only with `trust_pickle`, read by spandrel's restricted
  unpickler): spandrel detects the architecture (ESRGAN, Real-ESRGAN, SwinIR, HAT...) and the factor
  from the weights; a spec whose `scale` disagrees with them is refused at load, so a worker does not
  start with a catalogue that lies about its models. Half precision on CUDA where the architecture
  supports it (unless the spec sets `dtype`), eval mode, inference only.
- `tiny`: a small Real-ESRGAN-layout RRDBNet (x2 through pixel-unshuffle, like RealESRGAN_x2plus) made
  from a fixed seed and loaded through spandrel like a file, so detection and the model code are real.
  Its weights are near an average-then-enlarge filter plus noise, so its output still looks like the input.

Tiling (`Upscaler.upscale`): the image is cut into as few tiles of at most `tile` px as share `overlap(tile)`
px, shrunk to one size and evenly spread, each upscaled alone (spandrel pads a tile to the model's size
requirements and crops the padding off), and blended with feathered weights: a linear ramp across each
overlap, normalised per axis so the weights of every output pixel sum to 1 (seams do not show, however the
tiles fall). Memory is a tile's for the model, plus the output canvas (uint8) and one strip of float32 rows (a
row of tiles' output height × the output width, reused), where a row of tiles is blended: with 512 px tiles at
×4, a 2048 px wide input's strip is 2048 × 8192 × 12 bytes, 200 MB, against 800 MB for a float copy of a 2048²
input's output (tests/workers/test_upscale.py measures it).
`tile` 0: the whole image in one call. Then, when the requested factor is not the native one, the model's
output is resized with Lanczos to round(w × scale) × round(h × scale).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from service.catalog import ModelSpec
from service.catalog.models import BUILTIN_UPSCALER
from workers.models import DTYPES, resolve_device
from workers.spandrel_import import spandrel

log = logging.getLogger("fresco.upscalers")

TINY_SEED = 1234
TINY_SCALE = 2  # the catalogue's `tiny-esrgan` says so too (service/catalog/models_file.py)
TINY_FILTERS, TINY_GROWTH = 16, 32  # spandrel's RRDBNet always has 32 growth channels


def overlap(tile: int) -> int:
    """How many px neighbouring tiles share: 32 (ComfyUI's default at its 512 px tiles), a quarter of a
    tile under 128 px."""
    return min(32, tile // 4)


def tile_spans(length: int, tile: int, align: int = 1) -> list[tuple[int, int]]:
    """The tiles along one side of `length` px, as (start, end): as few as fit in `tile` px with about
    `overlap(tile)` px shared between neighbours, then shrunk to one size and spread evenly, the first at 0
    and the last ending at `length` (1024 px in tiles of 512: three of 363 px, 1.06x the pixels, not three
    of 512, 1.5x). Starts are multiples of `align` (the model's `multiple_of`: a pixel-unshuffle model
    groups pixels from its input's origin, so a tile must start on the whole image's grid to give what the
    whole image gives); the last tile is then up to `align - 1` px larger."""
    if tile <= 0 or length <= tile or tile <= 2 * align:  # (a tile must hold more than the model's grid)
        return [(0, length)]
    shared = overlap(tile)
    count = math.ceil((length - shared) / max(1, tile - shared))
    while (size := -(-math.ceil((length + (count - 1) * shared) / count) // align) * align) > tile:
        count += 1  # rounded up to the grid, one more tile is needed
    starts = [round(i * (length - size) / (count - 1)) // align * align for i in range(count)]
    return [(start, start + size if i < count - 1 else length) for i, start in enumerate(starts)]


def _axis_weights(spans: list[tuple[int, int]], scale: int) -> list[np.ndarray]:
    """Each tile's blend weights along one axis, in output px: a linear ramp across each overlap with a
    neighbour (none at the image's edges), normalised so the tiles' weights sum to 1 at every pixel."""
    raw, total = [], np.zeros(spans[-1][1] * scale, np.float32)
    for i, (start, end) in enumerate(spans):
        a, b = start * scale, end * scale
        x = np.arange(a, b, dtype=np.float32) + 0.5
        w = np.ones(b - a, np.float32)
        if i > 0:  # the previous tile ends inside this one
            w = np.minimum(w, (x - a) / max(spans[i - 1][1] * scale - a, 1))
        if i < len(spans) - 1:  # the next one starts inside this one
            w = np.minimum(w, (b - x) / max(b - spans[i + 1][0] * scale, 1))
        raw.append(w)
        total[a:b] += w
    return [w / total[start * scale:end * scale] for (start, end), w in zip(spans, raw)]


def output_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The size an image of width × height upscaled by `scale` has (the API's rule: rounded, at least 1)."""
    return max(1, round(width * scale)), max(1, round(height * scale))


class Upscaler:
    """An upscaler by its native factor `scale`; `upscale(image, scale, tile, on_tile)` makes the image
    `scale` times larger, calling `on_tile()` after each of its `tiles(width, height, tile)` tiles."""

    name: str = ""
    scale: int = 1

    def tiles(self, width: int, height: int, tile: int = 512) -> int:
        return 1

    def upscale(self, image: Image.Image, scale: float, tile: int = 512,
                on_tile: Callable[[], None] | None = None) -> Image.Image:
        raise NotImplementedError


class LanczosUpscaler(Upscaler):
    """Pillow's Lanczos filter: one resize, whatever the factor and `tile`."""

    def __init__(self, spec: ModelSpec):
        self.name, self.scale = spec.name, spec.scale or 2

    def upscale(self, image, scale, tile=512, on_tile=None):
        out = image.convert("RGB").resize(output_size(image.width, image.height, scale), Image.Resampling.LANCZOS)
        if on_tile is not None:
            on_tile()
        return out


class ModelUpscaler(Upscaler):
    """Weights spandrel loaded (an ImageModelDescriptor), run tile by tile."""

    def __init__(self, name: str, descriptor, device: torch.device, dtype: torch.dtype):
        self.name, self.descriptor, self.device, self.dtype = name, descriptor, device, dtype
        self.scale = descriptor.scale
        self.architecture = descriptor.architecture.name

    def tiles(self, width, height, tile=512):
        return len(self._spans(width, tile)) * len(self._spans(height, tile))

    def _spans(self, length: int, tile: int) -> list[tuple[int, int]]:
        requirements = self.descriptor.size_requirements
        return tile_spans(length, tile, requirements.multiple_of if requirements else 1)

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        """The model's output of an (h, w, 3) uint8 array, as an (h × s, w × s, 3) float32 array in 0..255."""
        x = torch.tensor(pixels, device=self.device).permute(2, 0, 1).unsqueeze(0).to(self.dtype).div_(255)
        with torch.inference_mode():
            y = self.descriptor(x)  # pads to the size requirements, crops the padding off, clamps to 0..1
            return y[0].permute(1, 2, 0).float().mul_(255).cpu().numpy()

    def upscale(self, image, scale, tile=512, on_tile=None):
        pixels = np.asarray(image.convert("RGB"))
        h, w = pixels.shape[:2]
        s = self.scale
        columns, rows = self._spans(w, tile), self._spans(h, tile)
        wx, wy = _axis_weights(columns, s), _axis_weights(rows, s)
        if len(rows) == len(columns) == 1:  # one tile: nothing to blend
            out = self._run(pixels)
            canvas = np.clip(np.rint(out, out=out), 0, 255, out=out).astype(np.uint8)
            if on_tile is not None:
                on_tile()
            return self._resized(Image.fromarray(canvas), output_size(w, h, scale))
        canvas = np.empty((h * s, w * s, 3), np.uint8)
        # One float strip, reused: a row of tiles' output rows, where their weighted outputs are summed.
        strip = np.zeros((max(y1 - y0 for y0, y1 in rows) * s, w * s, 3), np.float32)
        for r, (y0, y1) in enumerate(rows):
            top, bottom = y0 * s, y1 * s
            for c, (x0, x1) in enumerate(columns):
                out = self._run(pixels[y0:y1, x0:x1])
                out *= wy[r][:, None, None] * wx[c][None, :, None]
                strip[:bottom - top, x0 * s:x1 * s] += out
                if on_tile is not None:
                    on_tile()
            done = rows[r + 1][0] * s - top if r + 1 < len(rows) else bottom - top  # rows no later tile reaches
            final = strip[:done]
            np.clip(np.rint(final, out=final), 0, 255, out=final)
            canvas[top:top + done] = final  # (unsafe casting: the values are whole numbers in 0..255)
            carried = bottom - top - done  # the overlap with the next row of tiles moves to the strip's top
            strip[:carried] = strip[done:bottom - top].copy()
            strip[carried:] = 0
        return self._resized(Image.fromarray(canvas), output_size(w, h, scale))

    @staticmethod
    def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
        """The model's output at the requested factor's size (Lanczos), when that is not the native one's."""
        return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


# ---- the tiny profile's upscaler


def tiny_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    """A small Real-ESRGAN x2 RRDBNet state dict in Real-ESRGAN's key layout (`conv_first`, `body.N.rdbK.convJ`,
    `conv_body`, `conv_up1`, `conv_up2`, `conv_hr`, `conv_last`): 16 filters, one RRDB block. The input is
    pixel-unshuffled (3 × 4 channels); `conv_first` carries those channels through, the trunk adds a small
    random residual, the up and HR convolutions pass their input on (the HR one blurs it a little), and
    `conv_last` averages each colour's four sub-pixels: an enlarging filter, plus fixed-seed noise."""
    g = torch.Generator().manual_seed(seed)
    nf, gc, colours, sub = TINY_FILTERS, TINY_GROWTH, 3, TINY_SCALE * TINY_SCALE

    def noise(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    def passing(out_c, in_c, kernel=None):
        w = noise(out_c, in_c, 3, 3)
        k = kernel if kernel is not None else torch.tensor([[0.0, 0, 0], [0, 1, 0], [0, 0, 0]])
        for i in range(min(out_c, in_c)):
            w[i, i] += k
        return w

    state = {"conv_first.weight": passing(nf, colours * sub), "conv_first.bias": noise(nf, std=0.01)}
    for k in (1, 2, 3):
        for j in range(1, 6):
            in_c, out_c = nf + (j - 1) * gc, gc if j < 5 else nf
            state[f"body.0.rdb{k}.conv{j}.weight"] = noise(out_c, in_c, 3, 3, std=0.05)
            state[f"body.0.rdb{k}.conv{j}.bias"] = noise(out_c, std=0.01)
    state["conv_body.weight"], state["conv_body.bias"] = noise(nf, nf, 3, 3, std=0.05), noise(nf, std=0.01)
    blur = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    for name, kernel in (("conv_up1", None), ("conv_up2", None), ("conv_hr", blur)):
        state[f"{name}.weight"], state[f"{name}.bias"] = passing(nf, nf, kernel), noise(nf, std=0.01)
    last = noise(colours, nf, 3, 3, std=0.01)
    for c in range(colours):
        last[c, c * sub:(c + 1) * sub, 1, 1] += 1 / sub
    state["conv_last.weight"], state["conv_last.bias"] = last, torch.zeros(colours)
    return state


# ---- loading


def _descriptor(spec: ModelSpec):
    """spandrel's descriptor of the spec's weights (on the CPU), refused unless it is an image upscaler."""
    loader = spandrel().ModelLoader()
    try:
        if spec.is_tiny:
            descriptor = loader.load_from_state_dict(tiny_state_dict())
        else:
            path = Path(spec.source)
            if not path.is_file():
                raise ValueError(f"upscaler {spec.name}: no file {spec.source}")
            descriptor = loader.load_from_file(path)
    except spandrel().UnsupportedModelError:
        raise ValueError(f"upscaler {spec.name}: spandrel does not recognise the architecture of "
                         f"{Path(spec.source).name}") from None
    if not isinstance(descriptor, spandrel().ImageModelDescriptor) or descriptor.purpose not in ("SR", "Restoration"):
        raise ValueError(f"upscaler {spec.name}: {Path(spec.source).name} is a {descriptor.architecture.name} model "
                         f"for {descriptor.purpose}, not an upscaler")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ValueError(f"upscaler {spec.name}: takes {descriptor.input_channels} channels and gives "
                         f"{descriptor.output_channels}; only RGB upscalers are supported")
    return descriptor


def _dtype(spec: ModelSpec, descriptor, device: torch.device) -> torch.dtype:
    if spec.dtype != "auto":
        wanted = DTYPES[spec.dtype]
        supported = {torch.float16: descriptor.supports_half, torch.bfloat16: descriptor.supports_bfloat16}
        if not supported.get(wanted, True):
            raise ValueError(f"upscaler {spec.name}: its architecture ({descriptor.architecture.name}) does not "
                             f"run in {spec.dtype}")
        return wanted
    return torch.float16 if device.type == "cuda" and descriptor.supports_half else torch.float32


def load_upscaler(spec: ModelSpec, device: torch.device | str | None = None) -> Upscaler:
    """The upscaler of a catalogue spec (see the module docstring); ValueError when its weights cannot
    serve (not found, not an upscaler, another factor than the spec's `scale`)."""
    if spec.source == BUILTIN_UPSCALER:
        return LanczosUpscaler(spec)
    started = time.perf_counter()
    descriptor = _descriptor(spec)
    if spec.scale is not None and descriptor.scale != spec.scale:
        raise ValueError(f"upscaler {spec.name}: its weights ({descriptor.architecture.name}) upscale by "
                         f"{descriptor.scale}, the models file says `scale: {spec.scale}`; correct the models file")
    device = torch.device(device) if device is not None else resolve_device(spec)
    dtype = _dtype(spec, descriptor, device)
    descriptor.to(device).to(dtype).eval()
    descriptor.model.requires_grad_(False)
    log.info("loaded upscaler %s (%s x%d, %s) on %s in %.2fs", spec.name, descriptor.architecture.name,
             descriptor.scale, str(dtype).removeprefix("torch."), device, time.perf_counter() - started)
    return ModelUpscaler(spec.name, descriptor, device, dtype)


_CACHE: dict[tuple, Upscaler] = {}
_CACHE_LOCK = threading.Lock()


def upscaler_for(spec: ModelSpec) -> Upscaler:
    """The process's one upscaler of `spec` (loaded on first use; the upscale task and hires passes share it)."""
    key = (spec.name, spec.source, spec.scale, spec.device, spec.dtype)
    with _CACHE_LOCK:
        upscaler = _CACHE.get(key)
        if upscaler is None:
            upscaler = _CACHE[key] = load_upscaler(spec)
        return upscaler
