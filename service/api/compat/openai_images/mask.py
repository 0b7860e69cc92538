"""An OpenAI edit's `mask` -> the native `inpaint` mask.

OpenAI's convention: the mask is a PNG with an alpha channel, the image's size, whose fully transparent
pixels mark the area to edit. Fresco's native mask reads white as "repaint" (and an RGBA mask from its
alpha only when the alpha varies), so the adapter checks the mask as OpenAI does and hands the native
task an explicit grey mask: 255 - alpha (transparent = repaint, opaque = keep, partly transparent =
repaint partly). A mask with no transparent pixel edits nothing: a 400, as the native rules would answer
for an all-black mask, but in OpenAI's words.
"""

from __future__ import annotations

import base64
import io

from PIL import Image, ImageOps

from service.api.errors import ValidationFailed, field_error
from service import masks
from service.api.inputs import ImageRejected, decode_image, inline_image_size, is_url

FIELD = "mask"
NEEDS_ALPHA = ("must be a PNG with an alpha channel: its fully transparent pixels mark the area to edit "
               "(OpenAI's convention)")


def _refused(message: str) -> ValidationFailed:
    return ValidationFailed([field_error(FIELD, message)])


def native_mask(image: str, mask: str, settings) -> str:
    """The native mask (a grey PNG as a data URL) for an OpenAI mask; a 400 naming `mask` when it is not a
    PNG with alpha, not the image's size, or has nothing to edit."""
    if is_url(mask):
        raise _refused("must be a PNG file, not a URL")
    try:
        decoded = decode_image(mask, max_bytes=settings.max_image_bytes, max_pixels=settings.max_pixels)
    except ImageRejected as exc:
        raise _refused(str(exc)) from None
    if decoded.format != "png":
        raise _refused(NEEDS_ALPHA)
    size = inline_image_size(image)
    if size is not None and size != (decoded.width, decoded.height):
        raise _refused(f"must have the image's size (the image is {size[0]}×{size[1]}, the mask "
                       f"{decoded.width}×{decoded.height})")
    with Image.open(io.BytesIO(decoded.data)) as opened:
        alpha = masks.alpha(opened)
    if alpha is None:
        raise _refused(NEEDS_ALPHA)
    repaint = ImageOps.invert(alpha)
    if masks.is_empty(repaint):
        raise _refused("has no transparent pixels: nothing to edit (fully transparent pixels mark the area to "
                       "edit)")
    out = io.BytesIO()
    repaint.save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
