"""One error tree for the API, the handlers that answer with it, and messages that never echo the
rejected value. Every error is `{"error": {"code", "message", ["fields"]}, "request_id"}`."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any, Iterable

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.redis import REDIS_DOWN
from service.tasks import GENERATE_TASKS

log = logging.getLogger("fresco.api")
RETRY_AFTER_S = 5  # what a 503 asks a client to wait, unless it knows better (a full queue: longer)


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

    def __init__(self, message: str | None = None, retry_after: int = RETRY_AFTER_S):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class RouteNotFound(FrescoError):
    status, code, message = 404, "not_found", "no such route"


class MethodNotAllowed(FrescoError):
    status, code, message = 405, "method_not_allowed", "method not allowed"


def field_error(field: str, message: str) -> dict[str, str]:
    return {"field": field, "message": message}


_TASK_TAGS = frozenset(GENERATE_TASKS)
_TASK_CHOICES = ", ".join(f"'{t}'" for t in GENERATE_TASKS)
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
        return f"must be one of {_TASK_CHOICES}"
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
        loc = list(err["loc"])
        if loc and loc[0] in _TASK_TAGS:  # the union's tag, not a field
            loc = loc[1:]
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = ["task"]
        # A list index reads `loras[1]`. An unknown field's name is client input: named back only when it
        # is a plain identifier.
        name = ""
        for part in loc:
            if isinstance(part, int):
                name += f"[{part}]"
            else:
                part = str(part)
                part = part if (part.isascii() and part.isdigit()) or _SAFE_NAME.fullmatch(part) else "(unnamed field)"
                name += f".{part}" if name else part
        fields.append(field_error(name or "body", _message(err)))
    return fields


def dedupe(fields: Iterable[dict]) -> list[dict]:
    seen, out = set(), []
    for f in fields:
        key = (f["field"], f["message"])
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


# ---------------------------------------------------------------- answering with them


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type="application/json")


def request_id(request: Request) -> str:
    rid = request.headers.get("x-request-id", "")
    return rid if rid.isascii() and 0 < len(rid) <= 64 and rid.replace("-", "").isalnum() else uuid.uuid4().hex


def error_response(request: Request, exc: FrescoError) -> Response:
    rid = request_id(request)
    return json_response(exc.body(rid), exc.status, {**exc.headers, "X-Request-ID": rid})


def app_handler(request: Request, exc: Exception):
    """The app's handler for `exc` (the one `install_error_handlers` registered for its class), or None:
    for routes that answer errors in another API's shape, by reshaping what the handler answers."""
    handlers = request.app.exception_handlers
    return next((handlers[cls] for cls in type(exc).__mro__ if cls in handlers), None)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FrescoError)
    async def fresco_error(request: Request, exc: FrescoError):
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def request_validation(request: Request, exc: RequestValidationError):
        # Query and path parameters; never echo the input (FastAPI's default handler does).
        fields = [field_error(".".join(str(p) for p in e["loc"][1:]) or "query", "is invalid") for e in exc.errors()]
        return error_response(request, ValidationFailed(dedupe(fields)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        known = {404: RouteNotFound, 405: MethodNotAllowed}.get(exc.status_code)
        err = known() if known else FrescoError("request failed")
        if not known:
            err.status, err.code = exc.status_code, "http_error"
        err.headers = dict(exc.headers or {})
        return error_response(request, err)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        if isinstance(exc, REDIS_DOWN):
            return error_response(request, Unavailable("Redis is unreachable; retry later"))
        if isinstance(exc, OSError):  # a socket or a disk (the input image store) failing under us
            return error_response(request, Unavailable("a backing store is unreachable; retry later"))
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        rid = request_id(request)
        return json_response({"error": {"code": "internal", "message": "internal error"}, "request_id": rid}, 500,
                             {"X-Request-ID": rid})
