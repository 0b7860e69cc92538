"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, on every OpenAI route.

OpenAI clients read `error.message` and `error.param`, and the openai SDKs pick their exception class by
status (400 `BadRequestError`, 401 `AuthenticationError`, ...). Fresco's own errors (its API keys, rate
limit, body limit, the native validation) are answered first by the app's own handlers, exactly as on
`POST /generate`, and that answer is then reshaped: same headers (`Retry-After`, `WWW-Authenticate`,
`X-Request-ID`), OpenAI's body, and a native 422 becomes OpenAI's 400 naming the parameter.

The SDKs retry 408, 409, 429 and 5xx answers on their own unless told `x-should-retry: false`; that header
goes with the answers a retry would only repeat: a job that failed, a wait that ran out.
"""

from __future__ import annotations

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

from service.api.errors import app_handler, json_response, request_id

INVALID = "invalid_request_error"
# Fresco status -> (OpenAI status, type, code). A native 422 names fields: OpenAI says 400 and `param`.
_KINDS = {
    400: (400, INVALID, None),
    401: (401, INVALID, "invalid_api_key"),
    413: (413, INVALID, "request_too_large"),
    415: (415, INVALID, "unsupported_media_type"),
    422: (400, INVALID, "invalid_value"),
    429: (429, "requests", "rate_limit_exceeded"),
    503: (503, "server_error", "service_unavailable"),
}
_KEPT_HEADERS = ("retry-after", "www-authenticate", "x-request-id")


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class OpenAIError(Exception):
    """An error only the OpenAI adapter raises (a failed job, a wait past the server's limit)."""

    def __init__(self, status: int, message: str, *, type_: str = "server_error", code: str | None = None,
                 param: str | None = None, retry: bool = True):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param, self.retry = (
            status, message, type_, code, param, retry)

    def response(self, request: Request) -> Response:
        rid = request_id(request)
        headers = {"X-Request-ID": rid}
        if not self.retry:
            headers["x-should-retry"] = "false"
        return json_response(error_body(self.message, self.type, self.param, self.code), self.status, headers)


def reshape(response: Response) -> Response:
    """A Fresco error answer -> the same answer in OpenAI's shape."""
    error = orjson.loads(response.body)["error"]
    status, type_, code = _KINDS.get(response.status_code) or (
        response.status_code, "server_error" if response.status_code >= 500 else INVALID, error.get("code"))
    fields = error.get("fields") or []
    message = "; ".join(f"{f['field']}: {f['message']}" for f in fields) or error.get("message") or "request failed"
    param = fields[0]["field"] if fields else None
    headers = {k: v for k, v in response.headers.items() if k.lower() in _KEPT_HEADERS}
    return json_response(error_body(message, type_, param, code), status, headers)


class OpenAIRoute(APIRoute):
    """A route whose every error, its own or Fresco's, is answered in OpenAI's shape."""

    def get_route_handler(self):
        handle = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handle(request)
            except OpenAIError as exc:
                return exc.response(request)
            except Exception as exc:
                handler = app_handler(request, exc)
                if handler is None:
                    raise
                return reshape(await handler(request, exc))

        return route
