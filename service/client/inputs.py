"""Image inputs as the API takes them. A request's `image` and each `control[i].image` may be given as a
file path, bytes, a PIL image, or a `data:`/`https://` URL (or bare base64); everything but a URL or base64
is turned into a `data:` URL here, so the caller never base64-encodes by hand.

PIL is never imported by this module: a PIL image is recognised by its class's module, and only then is
`PIL.Image` (already loaded by whoever made the image) used to encode it.
"""

from __future__ import annotations

import base64
import io
import mimetypes
import os
import sys
from pathlib import Path
from typing import Any

_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))
_URL_PREFIXES = ("data:", "https://", "http://")


def sniff_mime(data: bytes) -> str:
    """The image type from its first bytes (the server checks again; this only labels the data URL)."""
    for magic, mime in _SIGNATURES:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def data_url(data: bytes, mime: str | None = None) -> str:
    return f"data:{mime or sniff_mime(data)};base64," + base64.b64encode(data).decode("ascii")


def _is_pil_image(value: Any) -> bool:
    image_module = sys.modules.get("PIL.Image")
    return image_module is not None and isinstance(value, image_module.Image)


def _pil_to_data_url(image: Any) -> str:
    """PNG: lossless, and every mode Pillow saves as PNG is one the server decodes."""
    buffer = io.BytesIO()
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "I", "1"):
        image = image.convert("RGB")
    image.save(buffer, format="PNG")
    return data_url(buffer.getvalue(), "image/png")


def _file_to_data_url(path: Path) -> str:
    data = path.read_bytes()
    guessed = mimetypes.guess_type(path.name)[0]
    return data_url(data, guessed if guessed and guessed.startswith("image/") else None)


def encode_image(value: Any) -> Any:
    """One image input as the API's string form. A `str` is taken as a URL or base64 unless it names an
    existing file. Anything else unknown is passed through for the server to judge (and reject, by field)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return data_url(bytes(value))
    if isinstance(value, os.PathLike):
        return _file_to_data_url(Path(value))
    if isinstance(value, str):
        if value.startswith(_URL_PREFIXES) or len(value) > 4096 or not Path(value).is_file():
            return value
        return _file_to_data_url(Path(value))
    if _is_pil_image(value):
        return _pil_to_data_url(value)
    return value


def encode_inputs(params: dict) -> dict:
    """A copy of the request's fields with `image` and each `control[i].image` encoded."""
    out = dict(params)
    if "image" in out:
        out["image"] = encode_image(out["image"])
    if isinstance(out.get("control"), (list, tuple)):
        out["control"] = [{**item, "image": encode_image(item["image"])}
                          if isinstance(item, dict) and "image" in item else item for item in out["control"]]
    return out
