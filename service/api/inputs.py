"""Input images: a data URL or bare base64, or an https URL when enabled (fetched through the guard
in `service/fetch.py`), decoded safely.

Limits are checked before any pixel is decoded: the byte size from the base64 length, the pixel
count from the header. PNG, JPEG and WebP only, one frame, not truncated.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image

from service.fetch import FetchRejected, fetch_public_url

_DATA_URL = re.compile(r"^data:image/(png|jpeg|jpg|webp);base64,", re.IGNORECASE)
FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}


class ImageRejected(ValueError):
    """The input image breaks a rule; the message is safe to show (it never quotes the input)."""


@dataclass(frozen=True)
class DecodedImage:
    data: bytes  # the original bytes, validated
    format: str  # png | jpeg | webp
    width: int
    height: int


def _b64_bytes(ref: str, max_bytes: int) -> bytes:
    match = _DATA_URL.match(ref)
    payload = ref[match.end():] if match else ref
    if ref.startswith("data:") and not match:
        raise ImageRejected("must be a data:image/png, image/jpeg or image/webp base64 URL")
    payload = "".join(payload.split())  # base64 may be wrapped
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise ImageRejected(f"is larger than {max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected("is not valid base64") from None
    if len(data) > max_bytes:
        raise ImageRejected(f"is larger than {max_bytes} bytes")
    return data


def is_url(ref: str) -> bool:
    return ref[:8].lower().startswith(("http://", "https://")) or "://" in ref[:16]


async def read_image(ref: str, settings) -> DecodedImage:
    """An `image` field: fetched when it is a URL (and URLs are enabled), then checked and decoded."""
    if not is_url(ref):
        return decode_image(ref, max_bytes=settings.max_image_bytes, max_pixels=settings.max_pixels)
    if not settings.allow_image_urls:
        raise ImageRejected("image URLs are disabled on this server; send a data URL or base64")
    try:
        data = await fetch_public_url(ref, schemes=settings.image_url_schemes,
                                      allowed_networks=settings.image_url_allow_networks,
                                      max_bytes=settings.max_image_bytes, timeout_s=settings.image_url_timeout_s,
                                      accept="image/png, image/jpeg, image/webp")
    except FetchRejected as exc:
        raise ImageRejected(str(exc)) from None
    return check_image_bytes(data, max_pixels=settings.max_pixels)


def inline_image_size(ref) -> tuple[int, int] | None:
    """An inline image's (data URL or bare base64) size from its header, nothing decoded; None for a URL
    or what is no readable image (the native rules then name it, with their limits)."""
    if not isinstance(ref, str) or is_url(ref):
        return None
    try:
        data = base64.b64decode(ref.split(",", 1)[1] if ref.startswith("data:") else ref)
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (binascii.Error, ValueError, OSError, IndexError, Image.DecompressionBombError):
        return None


def decode_image(ref: str, *, max_bytes: int, max_pixels: int) -> DecodedImage:
    """A data URL or bare base64."""
    return check_image_bytes(_b64_bytes(ref, max_bytes), max_pixels=max_pixels)


def check_image_bytes(data: bytes, *, max_pixels: int) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = FORMATS.get(img.format or "")
            if fmt is None:
                raise ImageRejected("must be a PNG, JPEG or WebP image")
            width, height = img.size  # from the header: nothing decoded yet
            if width < 1 or height < 1 or width * height > max_pixels:
                raise ImageRejected(f"must have at most {max_pixels} pixels")
            if getattr(img, "is_animated", False) or getattr(img, "n_frames", 1) != 1:
                raise ImageRejected("must be a single frame, not an animation")
            img.load()  # decodes; a truncated file fails here
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(f"must have at most {max_pixels} pixels") from None
    except Exception:
        raise ImageRejected("is not a readable image (corrupt or truncated)") from None
    return DecodedImage(data=data, format=fmt, width=width, height=height)
