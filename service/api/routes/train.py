"""POST /train: a training job (JSON, or multipart with a `dataset` zip); GET /adapters and
DELETE /adapters/{name}: the adapters the caller's API key trained (service/adapter_registry.py).

A training job is a job like any other once enqueued (read, streamed, waited for, canceled and
webhooked through /jobs); only its body and its checks differ: the name must be free for the key
(409, unless `replace`) and the key under FRESCO_MAX_ADAPTERS_PER_KEY (409).
"""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import APIRouter, Request, Response
from pydantic import TypeAdapter
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service import adapter_registry
from service.api.deps import Caller, base_url
from service.api.errors import (BadRequest, Conflict, NotFound, Unavailable, UnsupportedMediaType, ValidationFailed,
                                field_error, json_response)
from service.api.dataset_zip import read_dataset
from service.api.routes.generate import JOB_RESPONSES, accept, parse_json, read_body
from service.api.schemas import ErrorBody, JobView, TrainRequest
from service.api.submit import enqueue, validate_request
from service.redis import REDIS_DOWN

router = APIRouter()
log = logging.getLogger("fresco.api")
train_adapter: TypeAdapter = TypeAdapter(TrainRequest)
# Form fields kept as text; every other one is read as JSON (`steps=200`, `buckets=false`, `validation={...}`).
TEXT_FIELDS = frozenset({"model", "name", "method", "trigger", "init_token", "webhook"})


def body_limit(settings) -> int:
    """A dataset within FRESCO_MAX_TRAIN_BYTES, as base64 in JSON (4/3 larger), and the other fields."""
    return settings.max_train_bytes * 4 // 3 + 1024 * 1024


async def _once(body: bytes):
    yield body


def _form_value(name: str, value: str):
    if name in TEXT_FIELDS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value  # validation names the field and what it must be


async def read_train_body(request: Request, settings) -> dict:
    """The request as the JSON body's form: JSON as is; multipart's `dataset` zip unpacked into `images`."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    body = await read_body(request, body_limit(settings))
    if content_type == "application/json" or content_type.endswith("+json"):
        data = parse_json(body)
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object")
        return data
    if content_type != "multipart/form-data":
        raise UnsupportedMediaType("send the body as application/json, or multipart/form-data with a `dataset` zip")
    parser = MultiPartParser(request.headers, _once(body), max_files=2, max_fields=64, max_part_size=64 * 1024)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequest(f"the multipart body is malformed: {exc.message}") from None
    data: dict = {}
    dataset = None
    try:
        for name, value in form.multi_items():
            if name == "dataset":
                if not isinstance(value, UploadFile):
                    raise ValidationFailed([field_error("dataset", "must be a file: a zip of images and captions")])
                dataset = await value.read()
            elif isinstance(value, str):
                data[name] = _form_value(name, value)
            else:
                raise ValidationFailed([field_error(name, "must be a plain field; only `dataset` is a file")])
    finally:
        await form.close()
    if dataset is None:
        raise ValidationFailed([field_error("dataset", "is required: a zip of PNG, JPEG or WebP images with "
                                                       "optional same-name .txt captions")])
    if "images" in data:
        raise ValidationFailed([field_error("images", "give the images in `dataset` or in a JSON body, not both")])
    data["images"] = await asyncio.to_thread(read_dataset, dataset, max_image_bytes=settings.max_image_bytes,
                                             max_pixels=settings.max_pixels, max_total_bytes=settings.max_train_bytes)
    return data


async def check_name(c, owner: str | None, name: str, replace: bool) -> None:
    """409 when the key already has an adapter `name` (and does not replace it) or is at its limit."""
    try:
        existing = await adapter_registry.record(c.redis, owner, name)
        count = await adapter_registry.count(c.redis, owner)
    except REDIS_DOWN:
        raise Unavailable("the job queue is unreachable; retry later") from None
    if existing is not None and not replace:
        raise Conflict(f"this API key already has an adapter named {name!r}; choose another name, send "
                       f"\"replace\": true, or DELETE /adapters/{name}")
    limit = c.settings.max_adapters_per_key
    if existing is None and count >= limit:
        raise Conflict(f"this API key has {count} adapters, its limit (FRESCO_MAX_ADAPTERS_PER_KEY); "
                       f"DELETE /adapters/{{name}} one first")


@router.post(
    "/train",
    status_code=202,
    response_model=JobView,
    responses=JOB_RESPONSES,
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/TrainRequest"}},
        "multipart/form-data": {"schema": {"type": "object", "required": ["dataset", "model", "name"], "properties": {
            "dataset": {"type": "string", "format": "binary",
                        "description": "a zip of PNG/JPEG/WebP images with optional same-name .txt captions"},
            "model": {"type": "string"}, "name": {"type": "string"}}}}}}},
)
async def train(request: Request, caller: Caller):
    """Train a LoRA or an embedding on an SD or SDXL model; the adapter is the caller's once the job succeeds."""
    c, owner = caller.ctx, caller.owner
    await c.auth.rate_limit(owner)
    data = await read_train_body(request, c.settings)
    resolved = await validate_request(c, data, owner, train_adapter)
    await check_name(c, owner, resolved.params["name"], resolved.params["replace"])
    return await accept(request, c, owner, data, lambda idem: enqueue(c, resolved, owner, idem))


def _shown(c, request: Request, record: dict) -> dict:
    out = adapter_registry.listing(record)
    folder, file = adapter_registry.location(record["digest"])
    out["url"] = f"{base_url(request)}/results/{folder}/{file}{c.auth.sign(folder, file)}"
    return out


@router.get("/adapters", responses={401: {"model": ErrorBody}, 503: {"model": ErrorBody}})
async def list_adapters(request: Request, caller: Caller):
    """The adapters the caller's API key trained, by name."""
    c = caller.ctx
    try:
        records = await adapter_registry.records(c.redis, caller.owner)
    except REDIS_DOWN:
        raise Unavailable("the job queue is unreachable; retry later") from None
    return json_response({"adapters": [_shown(c, request, records[name]) for name in sorted(records)],
                          "limit": c.settings.max_adapters_per_key})


@router.delete("/adapters/{name}", status_code=204,
               responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 503: {"model": ErrorBody}})
async def delete_adapter(name: str, caller: Caller):
    """Remove one of the caller's adapters (its file goes when no other adapter record names it)."""
    c = caller.ctx
    try:
        removed = await adapter_registry.aunregister(c.redis, caller.owner, name)
    except REDIS_DOWN:
        raise Unavailable("the job queue is unreachable; retry later") from None
    if removed is None:
        raise NotFound(f"this API key has no adapter named {name!r}")
    for digest in removed[1]:
        try:
            await asyncio.to_thread(c.storage.delete, *adapter_registry.location(digest))
        except Exception:  # the record is gone; a file left behind is only space
            log.warning("deleting the file of adapter %s (%s) failed", name, digest, exc_info=True)
    return Response(status_code=204)
