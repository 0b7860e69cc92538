"""What OpenAI clients send, read and checked as far as the adapter must; the rest is the native path's.

The adapter checks only what it translates: the parameters' types (JSON strictly, as the native API does;
multipart form values are text, so there "2" is the integer 2), `n` (it splits jobs by it), `size` (it
becomes width and height), `response_format`, `model` (an alias or a model name, which decides the task),
and what Fresco cannot do (`stream`, `markup`). Everything the native request has (prompt, sizes' limits,
output_format, the image, steps...) is left to the native schema and rules, whose field names are then
mapped back to OpenAI's (`width`/`height` -> `size`, `num_images` -> `n`).

OpenAI parameters Fresco cannot honour (`quality`, `style`, `user`, `background`, ...) are accepted and
ignored; a parameter neither OpenAI nor Fresco knows is a 400 naming it, as OpenAI answers.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.api.errors import BadRequest, UnsupportedMediaType, ValidationFailed, field_error, validation_fields
from service.api.routes.generate import read_body, read_json

MAX_N = 10  # OpenAI's own cap on `n`; more than one job's worth is split into several jobs
_SIZE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")
IMAGE_FIELDS = ("image", "image[]")
MASK_FIELD = "mask"
# What OpenAI can do and Fresco cannot, refused with a reason rather than ignored.
UNSUPPORTED = {"markup": "markup images are not supported; send the image alone"}
NO_STREAM = "streaming is not supported; leave `stream` out or send false (the answer comes when the images are done)"


class GenerationForm(BaseModel):
    """`POST /v1/images/generations`: OpenAI's parameters, and a few of Fresco's native fields."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    model: str | None = Field(None, description="a Fresco model (GET /models) or an alias the server configures")
    n: int | None = Field(None, ge=1, le=MAX_N)
    size: str | None = Field(None, description='"WIDTHxHEIGHT" or "auto" (the model\'s default size)')
    response_format: Literal["url", "b64_json"] | None = Field(
        None, description="default: url; b64_json for a gpt-image-* model name, as OpenAI answers those")
    output_format: str | None = Field(None, description="png (default), jpeg or webp")
    stream: bool | None = Field(None, description="only false: streaming is not supported")
    # Fresco's native fields, checked by the native request's rules (a task that has no use for one drops it).
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    # OpenAI's, accepted and ignored: Fresco has no such control.
    quality: Any = None
    style: Any = None
    user: Any = None
    background: Any = None
    moderation: Any = None
    output_compression: Any = None
    partial_images: Any = None
    safety_identifier: Any = None
    complexity: Any = None
    frame_count: Any = None
    frame_duration_ms: Any = None
    svg: Any = None


class EditForm(GenerationForm):
    """`POST /v1/images/edits` (multipart): the image is read apart. `strength` is Fresco's img2img strength."""

    strength: float | None = Field(None, description="how far the image may change, 0 < strength <= 1 (0.7)")
    input_fidelity: Any = None


def checked(form: type[GenerationForm], data: dict, *, strict: bool) -> GenerationForm:
    """`data` as `form`, null values as absent (OpenAI's SDKs send None for "not given")."""
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        parsed = form.model_validate({k: v for k, v in data.items() if v is not None}, strict=strict)
    except ValidationError as exc:
        raise ValidationFailed(validation_fields(exc)) from None
    if parsed.stream:
        raise ValidationFailed([field_error("stream", NO_STREAM)])
    return parsed


def parse_size(size: str | None) -> tuple[int, int] | None:
    """(width, height), or None for the model's default ("auto" or absent); ValueError when malformed."""
    if size is None or size == "auto":
        return None
    match = _SIZE.match(size)
    if not match:
        raise ValueError(size)
    return int(match.group(1)), int(match.group(2))


async def read_generation(request: Request, limit: int) -> GenerationForm:
    """The generation request: JSON only, read as `POST /generate` reads its body."""
    return checked(GenerationForm, await read_json(request, limit), strict=True)


async def _once(body: bytes):
    yield body


async def _as_base64(value) -> str:
    """A file part's bytes as base64; a plain field (a data URL or base64) as it is."""
    return base64.b64encode(await value.read()).decode() if isinstance(value, UploadFile) else value


async def read_multipart(request: Request, limit: int) -> tuple[EditForm, str, str | None]:
    """The edit request, its one image and its mask (None without one) as base64 (the native decoder tells
    the format from the bytes, so the part's content type, often application/octet-stream, does not
    matter). The body is read within its limit first, then parsed from memory."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
        raise UnsupportedMediaType("send the body as multipart/form-data")
    body = await read_body(request, limit)
    parser = MultiPartParser(request.headers, _once(body), max_files=8, max_fields=64, max_part_size=limit)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequest(f"the multipart body is malformed: {exc.message}") from None
    try:
        fields, images, masks = {}, [], []
        for name, value in form.multi_items():
            if name in UNSUPPORTED:
                raise ValidationFailed([field_error(name, UNSUPPORTED[name])])
            if name in IMAGE_FIELDS:
                images.append(await _as_base64(value))  # a data URL or base64 as a plain field also does
            elif name == MASK_FIELD:
                masks.append(await _as_base64(value))
            else:
                fields[name] = value
    finally:
        await form.close()
    if len(images) != 1:
        message = "is required (a PNG, JPEG or WebP file)" if not images else \
            "give one image: Fresco edits one image at a time"
        raise ValidationFailed([field_error("image", message)])
    if len(masks) > 1:
        raise ValidationFailed([field_error(MASK_FIELD, "give one mask")])
    return checked(EditForm, fields, strict=False), images[0], masks[0] if masks else None
