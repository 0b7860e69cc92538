"""POST /generate: read the body within its limit, validate, resolve, enqueue; optionally wait."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Awaitable, Callable

from fastapi import APIRouter, Request

from service.api import idempotency
from service.api.access import MAX_WAIT_S
from service.api.deps import Ctx
from service.api.errors import BadRequest, PayloadTooLarge, Unavailable, UnsupportedMediaType, json_response
from service.api.schemas import ErrorBody, JobView
from service.api.submit import submit_request
from service.jobs.protocol import Idempotency
from service.jobs.states import TERMINAL
from service.redis import REDIS_DOWN

router = APIRouter()
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d{1,6})(?:$|[,;\s])", re.IGNORECASE)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit`: by Content-Length when sent, else
    while streaming (chunked bodies), never after buffering all of it."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BadRequest("Content-Length is not a number")
        if int(length) > limit:
            raise PayloadTooLarge()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str):
    # NaN and ±Infinity are no JSON numbers; they reach validation as non-finite floats (422, field named).
    return float(name)


def parse_json(body: bytes):
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body is not valid UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("the JSON is nested too deeply") from None
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None


async def read_json(request: Request, limit: int):
    """A JSON body (application/json or a +json type, else 415; so a browser cannot post one cross-site
    without a CORS preflight), read within `limit` and parsed strictly."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType()
    return parse_json(await read_body(request, limit))


def prefer_wait(request: Request) -> int | None:
    header = request.headers.get("prefer")
    if not header:
        return None
    match = _PREFER_WAIT.search(header)
    return min(int(match.group(1)), MAX_WAIT_S) if match else None


# What a route that enqueues a job answers (POST /generate, POST /train).
JOB_RESPONSES = {200: {"model": JobView, "description": "the job ended within `Prefer: wait=N`"},
                 **{status: {"model": ErrorBody} for status in (400, 401, 409, 413, 415, 422, 429, 503)}}


@router.post(
    "/generate",
    status_code=202,
    response_model=JobView,
    responses=JOB_RESPONSES,
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/GenerateRequest"}}}}},
)
async def generate(request: Request, c: Ctx):
    """Validate a request for one of the four tasks and enqueue it."""
    # The body is read and parsed before the API key is checked, as it always was: a client learns
    # that its body is too large or not JSON whether or not its key is valid.
    data = await read_json(request, c.settings.max_body_bytes)
    owner = c.auth.owner(request)
    await c.auth.rate_limit(owner)
    return await accept(request, c, owner, data, lambda idem: submit_request(c, data, owner, idem))


async def accept(request: Request, c, owner: str | None, data,
                 submit: Callable[[Idempotency | None], Awaitable[str]]):
    """Enqueue through `submit(idempotency)`, honouring an Idempotency-Key (the same key and body: the same
    job; `data` is the body its digest is of) and `Prefer: wait=N`; the answer: 202 (or 200 when the job
    ended within the wait) with the JobView and its Location."""
    key = request.headers.get("idempotency-key")
    if key is None:
        job_id = await submit(None)
    else:
        idempotency.check_header(key)
        rkey, digest = idempotency.redis_key(owner, key), idempotency.body_digest(data)
        mine = idempotency.new_claim(digest)
        try:
            job_id = await idempotency.claim(c.redis, rkey, digest, mine)
        except REDIS_DOWN:
            raise Unavailable("the job queue is unreachable; retry later") from None
        if job_id is None:
            try:
                job_id = await submit(Idempotency(rkey, f"{digest}:", c.settings.idempotency_ttl_s, mine))
            except BaseException:
                with contextlib.suppress(Exception):
                    await idempotency.release(c.redis, rkey, mine)
                raise

    headers = {"Location": f"/jobs/{job_id}"}
    wait = prefer_wait(request)
    if wait:
        h = await c.jobs.wait(job_id, wait)
        headers["Preference-Applied"] = f"wait={wait}"
        if h["status"] in TERMINAL:
            return json_response(c.view(h, request), 200, headers)
    else:
        h = await c.jobs.get(job_id)
    return json_response(c.view(h, request), 202, headers)
