"""Inpainting masks, read the same way by the API (its checks) and the worker (its pipeline): Pillow only.

A mask is any image: white repaints, black keeps, grey repaints partly, read as luminance; an RGBA (or
LA, or paletted with transparency) mask whose alpha varies is read from its alpha, transparent =
repaint (OpenAI's convention, and what a painted layer over a photo gives). One whose alpha is 0
everywhere (fully transparent) repaints everything, as OpenAI reads it, whatever its (invisible) colours;
one whose alpha is constant otherwise (an opaque image, say) is read as luminance.
"""

from __future__ import annotations

from PIL import Image, ImageOps

ASPECT_TOLERANCE = 0.01  # a mask's aspect ratio may differ from its image's by 1% (it is resized to it)


def alpha(image: Image.Image) -> Image.Image | None:
    """The image's alpha channel ("L"), or None when it has none (a paletted image's transparency counts)."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.getchannel("A") if image.mode in ("RGBA", "LA", "PA") else None


def read_mask(image: Image.Image, invert: bool = False) -> Image.Image:
    """The mask as an "L" image: 255 = repaint, 0 = keep."""
    alpha_ = alpha(image)
    if alpha_ is not None:
        low, high = alpha_.getextrema()
        if low != high or high == 0:  # varying alpha, or fully transparent: transparent = repaint
            return alpha_ if invert else ImageOps.invert(alpha_)
    mask = image.convert("L")
    return ImageOps.invert(mask) if invert else mask


def aspect_matches(mask_size: tuple[int, int], image_size: tuple[int, int]) -> bool:
    (mw, mh), (iw, ih) = mask_size, image_size
    return abs((mw / mh) / (iw / ih) - 1) <= ASPECT_TOLERANCE


def is_empty(mask: Image.Image) -> bool:
    """Nothing to repaint: every pixel black."""
    return mask.getextrema()[1] == 0
