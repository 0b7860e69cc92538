"""The client's error tree: one class per status of the contract's error table (docs/client.md), read off
the API's error body `{"error": {"code", "message", "fields"}, "request_id"}`, plus the errors that are no
HTTP answer: the network failing, and a job that ended without results.

Every class derives from `FrescoError`, so `except FrescoError` catches whatever the client raises.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Mapping


class FrescoError(Exception):
    """Base of every client error. `status` is the HTTP status (None when no answer came), `code` the
    contract's error code, `fields` the failing fields of a validation error ([{"field", "message"}]),
    `request_id` the API's id of the request (quote it when reporting a problem)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 fields: list[dict] | None = None, request_id: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.fields = list(fields or [])
        self.request_id = request_id
        self.retry_after = retry_after  # seconds the server asked to wait (Retry-After), when it said

    def __str__(self) -> str:
        head = f"{self.message} ({self.status} {self.code})" if self.status else self.message
        details = "; ".join(f"{f.get('field')}: {f.get('message')}" for f in self.fields)
        return f"{head}: {details}" if details else head


class BadRequestError(FrescoError):
    """400: the body is not JSON or not UTF-8."""


class AuthenticationError(FrescoError):
    """401: API keys are on and the key is missing or wrong."""


class NotFoundError(FrescoError):
    """404: no such job or result, or a job of another API key (indistinguishable on purpose)."""


class ConflictError(FrescoError):
    """409: the job already ended (cancel), or a request with the same Idempotency-Key is still in flight."""


class PayloadTooLargeError(FrescoError):
    """413: the body is over the server's limit (often a large input image)."""


class ValidationError(FrescoError):
    """422: the request is invalid; `fields` names each failing field, and `str()` lists them."""


class RateLimitError(FrescoError):
    """429: the API key's rate limit; `retry_after` says when to try again."""


class UnavailableError(FrescoError):
    """503: the queue is full, Redis is unreachable or no worker serves the task; `retry_after` says when."""


class ServerError(FrescoError):
    """5xx other than 503: a fault on the server's side."""


class APIConnectionError(FrescoError):
    """No HTTP answer: the connection failed, timed out or dropped (the httpx error is the `__cause__`)."""


class JobError(FrescoError):
    """A job ended without results; `job` is its final state (a `Job`; types.py imports this module, not
    the other way round) and `code`/`message` its error."""

    def __init__(self, job: Any):
        error = job.error
        code = error.code if error else job.status
        message = error.message if error and error.message else f"job {job.status}"
        super().__init__(f"job {job.id} {job.status}: {message}", code=code)
        self.job = job


class JobFailed(JobError):
    """The job failed (`code`: gpu_oom, timeout, worker_lost, invalid_input, internal)."""


class JobCanceled(JobError):
    """The job was canceled before it finished."""


_BY_STATUS: dict[int, type[FrescoError]] = {
    400: BadRequestError, 401: AuthenticationError, 404: NotFoundError, 409: ConflictError,
    413: PayloadTooLargeError, 422: ValidationError, 429: RateLimitError, 503: UnavailableError,
}


def error_class(status: int) -> type[FrescoError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else FrescoError


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` in seconds: either delay-seconds or an HTTP date (RFC 9110 10.2.3); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def error_from_response(status: int, headers: Mapping[str, str], content: bytes) -> FrescoError:
    """The typed error for an HTTP error answer. The body is the contract's JSON when it comes from
    Fresco; a proxy's HTML or object storage's XML still gives an error of the right class."""
    body: Any = None
    try:
        body = json.loads(content) if content else None
    except ValueError:
        pass
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {}
    request_id = (body.get("request_id") if isinstance(body, dict) else None) or headers.get("x-request-id")
    fields = error.get("fields") if isinstance(error.get("fields"), list) else None
    return error_class(status)(
        str(error.get("message") or f"HTTP {status}"), status=status, code=error.get("code"), fields=fields,
        request_id=request_id, retry_after=parse_retry_after(headers.get("retry-after")))
