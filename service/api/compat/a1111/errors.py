"""Errors on `/sdapi/v1`: Fresco's error shape, with the fields A1111 clients know, plus `detail`.

A1111 answers errors as `{"error": ..., "detail": "..."}` and its clients print `detail`. Fresco's shape
stays (`error.code`, `error.message`, `error.fields`, `request_id`) and gains `detail`, one line naming each
failing field. A native validation error names the native field; here it names the A1111 field the
client sent (`guidance_scale` is `cfg_scale`, `image` is `init_images[0]`, …): `native_names` translates
those. Every route of the router answers through `A1111Route`, which adds `detail` to any FrescoError, and
to what the app's own handlers answer for anything else (Redis or a disk gone: 503; a bug: 500).
"""

from __future__ import annotations

import re

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from service.api.errors import FrescoError, ValidationFailed, app_handler, dedupe, field_error, json_response

# Native request field -> the A1111 field it came from.
A1111_FIELD = {"guidance_scale": "cfg_scale", "num_images": "batch_size", "scheduler": "sampler_name",
               "image": "init_images[0]", "strength": "denoising_strength",
               "model": "override_settings.sd_model_checkpoint", "loras": "prompt",
               # inpainting (img2img with a mask)
               "mask_padding": "inpaint_full_res_padding", "fill": "inpainting_fill",
               "invert_mask": "inpainting_mask_invert",
               # the hires fix (txt2img with enable_hr)
               "hires.scale": "hr_scale", "hires.upscaler": "hr_upscaler", "hires.strength": "denoising_strength",
               "hires.steps": "hr_second_pass_steps", "hires": "enable_hr"}
_LORA_FIELD = re.compile(r"^loras(\[\d+\])?(\.\w+)?$")


def a1111_field(native: str, names: dict | None = None) -> str:
    """The A1111 field a native field came from: `names` (the request's own) first, then A1111_FIELD."""
    if names and native in names:
        return names[native]
    if _LORA_FIELD.match(native):  # the LoRAs come from the prompt's <lora:…> tags
        return "prompt"
    return A1111_FIELD.get(native, native)


class A1111Error(FrescoError):
    """A FrescoError as `/sdapi/v1` answers it, with a `detail` line; `rename`: its fields are a native
    request's, to be named as A1111 names them (`names`: the request's own names, before A1111_FIELD)."""

    def __init__(self, err: FrescoError, rename: bool = False, names: dict | None = None):
        fields = err.fields
        if fields is not None and rename:
            fields = [{**f, "field": a1111_field(f["field"], names)} for f in fields]
        super().__init__(err.message, fields=fields, headers=err.headers)
        self.status, self.code = err.status, err.code

    def body(self, request_id: str) -> dict:
        return with_detail(super().body(request_id))


def with_detail(body: dict) -> dict:
    """An error body with A1111's `detail`: the message, then each failing field."""
    error = body["error"]
    parts = [f"{f['field']}: {f['message']}" for f in error.get("fields") or []]
    body["detail"] = f"{error['message']}: " + "; ".join(parts) if parts else error["message"]
    return body


class A1111Route(APIRoute):
    """Answers any FrescoError a handler raises as an A1111Error (see the module's docstring)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request):
            try:
                return await handler(request)
            except A1111Error:
                raise
            except FrescoError as exc:
                raise A1111Error(exc) from None
            except RequestValidationError as exc:  # a query parameter; never echo its value
                fields = [field_error(".".join(str(p) for p in e["loc"][1:]) or "query", "is invalid")
                          for e in exc.errors()]
                raise A1111Error(ValidationFailed(dedupe(fields))) from None
            except Exception as exc:  # answered by the app's handler, with `detail` added
                answer = app_handler(request, exc)
                if answer is None:
                    raise
                response = await answer(request, exc)
                return json_response(with_detail(orjson.loads(response.body)), response.status_code,
                                     {k: v for k, v in response.headers.items() if k.lower() != "content-length"})

        return route


class JobFailed(FrescoError):
    """A job of the call failed on its worker: the status says whether retrying may help."""

    STATUS = {"invalid_input": 422, "gpu_oom": 503, "worker_lost": 503, "timeout": 504, "internal": 500}

    def __init__(self, code: str, message: str):
        super().__init__(message, headers={"Retry-After": "5"} if self.STATUS.get(code) == 503 else None)
        self.status, self.code = self.STATUS.get(code, 500), code


class CallTimedOut(FrescoError):
    status, code = 504, "timeout"
