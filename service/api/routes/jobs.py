"""A job's state: GET (with long-poll), Server-Sent Events, DELETE (cancel)."""

from __future__ import annotations

import asyncio
import json
import uuid

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from service.api.access import MAX_WAIT_S
from service.api.deps import Caller
from service.api.errors import FrescoError, json_response
from service.api.schemas import ErrorBody, JobView
from service.jobs.states import TERMINAL, EventType, JobStatus

router = APIRouter()
KEEPALIVE_S = 15.0


@router.get("/jobs/{job_id}", response_model=JobView, responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}})
async def get_job(request: Request, caller: Caller, job_id: str, wait: int = Query(0, ge=0, le=MAX_WAIT_S)):
    """The job's state. With `?wait=N`, answer as soon as the job ends, or after N seconds."""
    c, owner = caller.ctx, caller.owner
    h = await c.jobs.wait(job_id, wait, owner) if wait else await c.jobs.get(job_id, owner)
    return json_response(c.view(h, request))


@router.delete("/jobs/{job_id}", status_code=202, response_model=JobView,
               responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 503: {"model": ErrorBody}})
async def cancel_job(request: Request, caller: Caller, job_id: str):
    """Cancel: a queued job never runs; a running one stops at its next denoising step."""
    c = caller.ctx
    h = await c.jobs.cancel(job_id, caller.owner)
    return json_response(c.view(h, request), 202)


def _sse(event: str, data) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@router.get("/jobs/{job_id}/events", responses={
    200: {"content": {"text/event-stream": {}}, "description": "progress events, then one done event"},
    404: {"model": ErrorBody}, 503: {"model": ErrorBody}})
async def job_events(request: Request, caller: Caller, job_id: str):
    """Server-Sent Events: a `progress` event per change, then `done` with the terminal JobView
    (or `error` when the job store becomes unreachable mid-stream)."""
    c = caller.ctx
    first = await c.jobs.get(job_id, caller.owner)  # 401/404 before the stream starts

    async def stream():
        try:
            async for chunk in _events():
                yield chunk
        except FrescoError as exc:  # Redis lost mid-stream: say so, then end; the client reconnects
            yield _sse("error", exc.body(uuid.uuid4().hex))

    async def _events():
        with c.hub.subscribe(job_id) as events:
            h = first if first["status"] in TERMINAL else await c.jobs.get(job_id)
            last = None
            while True:
                if h is not None:  # a fresh read of the job
                    if h["status"] in TERMINAL:
                        yield _sse(EventType.DONE, c.view(h, request))
                        return
                    state = {"status": h["status"], "progress": json.loads(h["progress"])}
                    if state != last:
                        yield _sse(EventType.PROGRESS, state)
                        last = state
                    h = None
                try:
                    event = await asyncio.wait_for(events.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    yield b": keep-alive\n\n"
                    h = await c.jobs.get(job_id)
                    continue
                if event.get("type") == EventType.PROGRESS:
                    state = {"status": event.get("status", JobStatus.RUNNING), "progress": event["progress"]}
                    if state != last:
                        yield _sse(EventType.PROGRESS, state)
                        last = state
                else:  # done, or the event stream reconnected: read the job itself
                    h = await c.jobs.get(job_id)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
