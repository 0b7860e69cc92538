"""One error tree for the API, one status table, and messages that never echo the rejected value."""

from __future__ import annotations

import re
from typing import Any, Iterable

from pydantic import ValidationError


class FrescoError(Exception):
    """An error with a status and a code from the contract's table."""

    status = 500
    code = "internal"
    message = "internal error"

    def __init__(self, message: str | None = None, *, fields: list[dict] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.fields = fields
        self.headers = headers or {}

    def body(self, request_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields is not None:
            error["fields"] = self.fields
        return {"error": error, "request_id": request_id}


class BadRequest(FrescoError):
    status, code, message = 400, "bad_request", "the body is not valid JSON"


class NotFound(FrescoError):
    status, code, message = 404, "not_found", "no such job or result"


class Conflict(FrescoError):
    status, code, message = 409, "conflict", "the job has already ended"


class PayloadTooLarge(FrescoError):
    status, code, message = 413, "payload_too_large", "the body is larger than the configured limit"


class UnsupportedMediaType(FrescoError):
    status, code, message = 415, "unsupported_media_type", "send the body as application/json"


class ValidationFailed(FrescoError):
    status, code, message = 422, "validation_error", "request is invalid"

    def __init__(self, fields: list[dict], message: str | None = None):
        super().__init__(message, fields=fields)


class Unavailable(FrescoError):
    status, code, message = 503, "unavailable", "the service is unavailable; retry later"

    def __init__(self, message: str | None = None, retry_after: int = 5):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


def field_error(field: str, message: str) -> dict[str, str]:
    return {"field": field, "message": message}


_TASK_TAGS = {"sdxl", "turbo", "img2img", "svd"}
_SAFE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _message(err: dict) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "must be an integer"
    if kind in ("float_type", "float_parsing"):
        return "must be a number"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("bool_type", "bool_parsing"):
        return "must be true or false"
    if kind in ("string_type",):
        return "must be a string"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"must be at least {ctx.get('min_length')} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}"
    if kind == "greater_than":
        return f"must be greater than {ctx.get('gt')}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')}"
    if kind == "less_than":
        return f"must be less than {ctx.get('lt')}"
    if kind == "multiple_of":
        return f"must be a multiple of {ctx.get('multiple_of')}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return "must be one of 'sdxl', 'turbo', 'img2img', 'svd'"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a JSON object"
    if kind == "string_unicode":
        return "must be valid Unicode (no unpaired surrogates)"
    if kind.startswith("text_"):
        return err["msg"]
    return "is invalid"


def validation_fields(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic errors -> the contract's `fields`, naming each field and never its value."""
    fields = []
    for err in exc.errors(include_url=False, include_input=False, include_context=True):
        loc = [str(part) for part in err["loc"]]
        if loc and loc[0] in _TASK_TAGS:  # the union's tag, not a field
            loc = loc[1:]
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = ["task"]
        # An unknown field's name is client input: named back only when it is a plain identifier.
        loc = [part if (part.isascii() and part.isdigit()) or _SAFE_NAME.fullmatch(part) else "(unnamed field)"
               for part in loc]
        fields.append(field_error(".".join(loc) or "body", _message(err)))
    return fields


def dedupe(fields: Iterable[dict]) -> list[dict]:
    seen, out = set(), []
    for f in fields:
        key = (f["field"], f["message"])
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out
