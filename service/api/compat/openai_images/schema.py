"""The OpenAI routes in the OpenAPI document: their bodies (read by hand, within the body limit, so FastAPI
cannot infer them) and their answers, success and errors."""

from __future__ import annotations

from pydantic import BaseModel

from service.api.compat.openai_images.forms import EditForm, GenerationForm


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: str | None = None
    size: str | None = None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    error: OpenAIErrorDetail


def _multipart(form: type[BaseModel]) -> dict:
    """`form`'s schema as form fields (text: a string unless typed, never null), plus the image."""
    props = {}
    for name, prop in form.model_json_schema()["properties"].items():
        typed = [option for option in prop.get("anyOf", [prop]) if option.get("type") not in (None, "null")]
        props[name] = {**(typed[0] if typed else {"type": "string"}), "description": prop.get("description", "")}
    binary = {"type": "string", "format": "binary"}
    props["image"] = {**binary, "description": "the image to edit: PNG, JPEG or WebP (or send it as image[])"}
    props["image[]"] = {"type": "array", "items": binary, "maxItems": 1}
    props["mask"] = {**binary, "description": "inpainting: a PNG of the image's size whose fully transparent "
                                              "pixels mark the area to edit"}
    return {"type": "object", "properties": props, "required": ["prompt", "image"]}


# `prompt` is read as optional so that the native rules name it when it is missing; OpenAI requires it.
GENERATION_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {**GenerationForm.model_json_schema(), "required": ["prompt"]}}}}}
EDIT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _multipart(EditForm)}}}}

_ERRORS = {
    400: "invalid request (`error.param` names the parameter)",
    401: "API keys are on and the key is missing or wrong",
    413: "the body is larger than the server's limit",
    415: "the wrong content type",
    429: "the key's rate limit (Retry-After)",
    500: "the job failed (x-should-retry: false), or an internal error",
    503: "the queue is full or Redis is unreachable (Retry-After)",
    504: "the job did not finish within the server's limit; it was canceled (x-should-retry: false)",
}
RESPONSES = {200: {"model": ImagesResponse, "description": "the images, once every job has ended"},
             **{status: {"model": OpenAIErrorBody, "description": text} for status, text in _ERRORS.items()}}
