"""`POST /sdapi/v1/extra-single-image` (A1111's "Extras" tab, upscaling only) -> one native `upscale` job.

A1111's body: `image`, `resize_mode` (0: by `upscaling_resize`; 1: to `upscaling_resize_w` ×
`upscaling_resize_h`), `upscaler_1`, and face restoration and a second upscaler, which Fresco has not
(named in `html_info` when turned on). The answer: `{"html_info": "<p>…</p>", "image": base64 PNG}`.
`upscaler_1` "None" (A1111's and webuiapi's default) upscales nothing: the image comes back as it is, as
A1111 answers, with no job.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from service.api.compat.a1111 import upscalers
from service.api.compat.a1111.fields import Reader, on
from service.api.errors import ValidationFailed, field_error
from service.api.inputs import inline_image_size
from service.catalog import Catalog
from service.recipe import number

# Native field -> the A1111 field it came from (`scale` is `upscaling_resize_w` with resize_mode 1).
NAMES = {"image": "image", "scale": "upscaling_resize", "model": "upscaler_1"}


@dataclass
class ExtrasPlan:
    image: str
    body: dict | None  # the native `upscale` body; None: upscaler "None", the image as it is
    upscaler: str  # as A1111 names it, for html_info
    warnings: list[str] = field(default_factory=list)
    names: dict = field(default_factory=lambda: dict(NAMES))


def plan(catalog: Catalog, body) -> ExtrasPlan:
    if not isinstance(body, dict):
        raise ValidationFailed([field_error("body", "must be a JSON object")])
    read = Reader(body)
    image = body.get("image")
    if not isinstance(image, str) or not image:
        read.errors.append(field_error("image", "is required (base64 or a data URL)"))
    mode = read.int("resize_mode", 0)
    if isinstance(mode, int) and mode not in (0, 1):
        read.errors.append(field_error("resize_mode", "must be 0 (scale by upscaling_resize) or 1 (to "
                                                      "upscaling_resize_w × upscaling_resize_h)"))
    scale = read.number("upscaling_resize", 2.0)
    target = (read.int("upscaling_resize_w", 512), read.int("upscaling_resize_h", 512))
    try:
        model = upscalers.for_extras(catalog, body.get("upscaler_1"))
    except upscalers.UnknownUpscaler as exc:
        read.errors.append(field_error("upscaler_1", str(exc)))
        model = None
    if read.errors:
        raise ValidationFailed(read.errors)
    out = ExtrasPlan(image, None, upscalers.NONE, warnings=_ignored(body))
    if model is None:
        return out
    if mode == 1:
        scale = _scale_to(image, target, out)
    out.upscaler = upscalers.a1111_name(model)
    out.body = {"task": "upscale", "model": model, "image": image, "scale": scale, "output_format": "png"}
    return out


def _scale_to(image: str, target: tuple[int, int], out: ExtrasPlan) -> float:
    """resize_mode 1: the factor that takes the image to the target size (the largest that fits in it, when
    the target has another aspect ratio: Fresco scales both sides alike and crops nothing)."""
    size = inline_image_size(image)
    width, height = target
    if size is None:
        raise ValidationFailed([field_error("image", "must be an inline PNG, JPEG or WebP image (base64) with "
                                                     "resize_mode 1")])
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        raise ValidationFailed([field_error("upscaling_resize_w", "upscaling_resize_w and upscaling_resize_h must "
                                                                  "be positive with resize_mode 1")])
    sx, sy = width / size[0], height / size[1]
    scale = min(sx, sy)
    if (round(size[0] * scale), round(size[1] * scale)) != (width, height):
        out.warnings.append(f"{width}×{height} is not the image's {size[0]}×{size[1]} scaled evenly; upscaled by "
                            f"{scale:g} to fit within it (not cropped)")
    out.names["scale"] = "upscaling_resize_w"
    return scale


def _ignored(body: dict) -> list[str]:
    out = []
    for name in ("gfpgan_visibility", "codeformer_visibility"):
        value = body.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            out.append(f"face restoration ({name}) is not supported; ignored")
    visibility = body.get("extras_upscaler_2_visibility")
    if on(body.get("upscaler_2")) and isinstance(visibility, (int, float)) and visibility > 0:
        out.append("a second upscaler (upscaler_2) is not supported; ignored")
    return out


def html_info(p: ExtrasPlan, scale: float | None) -> str:
    """A1111's `html_info`: the image's postprocessing entries, then Fresco's warnings, as HTML paragraphs."""
    text = (f"Postprocess upscale by: {number(scale)}, Postprocess upscaler: {p.upscaler}" if scale is not None
            else "Postprocess upscaler: None (the image as it is)")
    paragraphs = [text, *(f"Warning: {w}" for w in p.warnings)]
    return "".join(f"<p>{html.escape(t)}</p>" for t in paragraphs)
