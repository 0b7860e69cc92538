"""The shapes `/sdapi/v1` answers with, as A1111 documents them (modules/api/models.py), for the OpenAPI
schema. Handlers build plain dicts; these only describe them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from service.api.schemas import ErrorBody


class A1111ErrorBody(ErrorBody):
    detail: str  # the message and each failing field in one line, for clients that print A1111's `detail`


class ImageResponse(BaseModel):
    images: list[str]  # base64 PNG, no data: prefix
    parameters: dict[str, Any]
    info: str  # a JSON object, as a string


class ProgressState(BaseModel):
    skipped: bool
    interrupted: bool
    stopping_generation: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None
    textinfo: str | None


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str
    sha256: str
    filename: str
    config: str | None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float
    need_inner_model: bool


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None
    model_path: str | None
    model_url: str | None
    scale: float | None


class ExtrasResponse(BaseModel):
    html_info: str
    image: str  # base64 PNG, no data: prefix


class NamedItem(BaseModel):
    name: str


class VaeItem(BaseModel):
    model_name: str
    filename: str


class ScriptsList(BaseModel):
    txt2img: list[str]
    img2img: list[str]


ERRORS = {status: {"model": A1111ErrorBody} for status in (400, 401, 413, 422, 429, 503)}
GENERATE_ERRORS = {**ERRORS, **{status: {"model": A1111ErrorBody} for status in (500, 504)}}

# The request bodies of txt2img and img2img: the fields Fresco maps (any other A1111 field is accepted).
_PROPERTIES = {
    "prompt": {"type": "string"}, "negative_prompt": {"type": "string"}, "width": {"type": "integer"},
    "height": {"type": "integer"}, "steps": {"type": "integer"}, "cfg_scale": {"type": "number"},
    "sampler_name": {"type": "string"}, "scheduler": {"type": "string"}, "seed": {"type": "integer"},
    "batch_size": {"type": "integer"}, "n_iter": {"type": "integer"}, "denoising_strength": {"type": "number"},
    "send_images": {"type": "boolean"}, "disable_extra_networks": {"type": "boolean"},
    "override_settings": {"type": "object", "properties": {"sd_model_checkpoint": {"type": "string"}}},
}
_HIRES = {"enable_hr": {"type": "boolean"}, "hr_scale": {"type": "number"}, "hr_resize_x": {"type": "integer"},
          "hr_resize_y": {"type": "integer"}, "hr_upscaler": {"type": "string"},
          "hr_second_pass_steps": {"type": "integer"}}
_INPAINT = {"mask": {"type": "string"}, "mask_blur": {"type": "integer"},
            "inpainting_fill": {"type": "integer", "enum": [0, 1, 2, 3]}, "inpaint_full_res": {"type": "boolean"},
            "inpaint_full_res_padding": {"type": "integer"}, "inpainting_mask_invert": {"type": "integer",
                                                                                       "enum": [0, 1]}}


def request_body(img2img: bool) -> dict:
    properties = {**_PROPERTIES, **(_INPAINT if img2img else _HIRES)}
    if img2img:
        properties["init_images"] = {"type": "array", "items": {"type": "string"}, "minItems": 1}
        properties["include_init_images"] = {"type": "boolean"}
    schema = {"type": "object", "properties": properties, **({"required": ["init_images"]} if img2img else {})}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


EXTRAS_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["image"], "properties": {
        "image": {"type": "string"}, "resize_mode": {"type": "integer", "enum": [0, 1]},
        "upscaling_resize": {"type": "number"}, "upscaling_resize_w": {"type": "integer"},
        "upscaling_resize_h": {"type": "integer"}, "upscaler_1": {"type": "string"}}}}}}}

OPTIONS_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "properties": {"sd_model_checkpoint": {"type": "string"}}}}}}}
