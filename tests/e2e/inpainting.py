"""What the e2e inpaint tests share (native, OpenAI's `images.edit`, A1111's `img2img`): one input, one
rectangle to repaint, and the check that a result repaints inside it and is the input, pixel for pixel,
wherever the blurred mask is 0."""

from __future__ import annotations

import numpy as np
from PIL import Image

BOX = (48, 32, 80, 64)  # left, top, right, bottom: what the masks repaint
BLUR = 4
MARGIN = 3 * BLUR + 2  # beyond this distance from what is repainted, the blurred mask is 0


def source() -> Image.Image:
    """A 128×96 input with detail everywhere (a flat one would hide a changed pixel)."""
    return Image.effect_mandelbrot((128, 96), (-2, -1.2, 1, 1.2), 60).convert("RGB")


def assert_repainted_only_inside(result: Image.Image, src: Image.Image, *boxes: tuple[int, int, int, int]) -> None:
    """`result` (at least `src`'s size: outpainting adds to the right or bottom) differs from `src` inside
    BOX and equals it outside BOX and `boxes` (other repainted areas), each widened by MARGIN."""
    out = np.asarray(result.convert("RGB"), dtype=np.int16)
    inp = np.asarray(src.convert("RGB"), dtype=np.int16)
    height, width = inp.shape[:2]
    keep = np.ones((height, width), bool)
    for left, top, right, bottom in (BOX, *boxes):
        keep[max(top - MARGIN, 0):bottom + MARGIN, max(left - MARGIN, 0):right + MARGIN] = False
    assert (out[:height, :width][keep] == inp[keep]).all()
    left, top, right, bottom = BOX
    assert np.abs(out[top:bottom, left:right] - inp[top:bottom, left:right]).mean() > 5
