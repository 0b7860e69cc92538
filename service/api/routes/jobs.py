"""A job's state: GET (with long-poll), Server-Sent Events, DELETE (cancel)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from service.api.access import MAX_WAIT_S
from service.api.deps import Caller
from service.api.errors import FrescoError, json_response
from service.api.schemas import ErrorBody, JobView
from service.jobs import protocol
from service.jobs.states import TERMINAL, EventType, JobStatus
from service.redis import REDIS_DOWN

router = APIRouter()
KEEPALIVE_S = 15.0
# A previews stream renews the job's `watched` flag this often; the flag lapses this long after the
# stream's last renewal (a crashed API process leaves the worker making previews no longer than that).
WATCH_RENEW_S, WATCH_TTL_S = 3.0, 10.0


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
async def job_events(request: Request, caller: Caller, job_id: str,
                     previews: bool = Query(False, description="progress events also carry `preview`, a small "
                                                               "image of the current latents, every few steps")):
    """Server-Sent Events: a `progress` event per change, then `done` with the terminal JobView
    (or `error` when the job store becomes unreachable mid-stream). With `?previews=true`, the job's
    worker makes live previews while this stream is open, and progress events carry the new ones."""
    c = caller.ctx
    first = await c.jobs.get(job_id, caller.owner)  # 401/404 before the stream starts
    previews = previews and c.settings.previews

    async def stream():
        watching = asyncio.create_task(_watch()) if previews and first["status"] not in TERMINAL else None
        try:
            async for chunk in _events():
                yield chunk
        except FrescoError as exc:  # Redis lost mid-stream: say so, then end; the client reconnects
            yield _sse("error", exc.body(uuid.uuid4().hex))
        finally:
            if watching is not None:
                watching.cancel()

    async def _watch():
        """Tell the worker someone watches, renewed while the stream is open (it lapses on its own)."""
        while True:
            with contextlib.suppress(*REDIS_DOWN):
                await protocol.watch(c.redis, job_id, WATCH_TTL_S)
            await asyncio.sleep(WATCH_RENEW_S)

    def progress_event(status: str, progress: dict, preview: str | None, last: dict | None):
        state = {"status": status, "progress": progress}
        if state == last and not preview:
            return None, last
        return _sse(EventType.PROGRESS, {**state, "preview": preview} if preview else state), state

    async def _events():
        with c.hub.subscribe(job_id) as events:
            h = first if first["status"] in TERMINAL else await c.jobs.get(job_id)
            last = None
            preview = await protocol.latest_preview(c.redis, job_id) if previews else None  # one made already
            while True:
                if h is not None:  # a fresh read of the job
                    if h["status"] in TERMINAL:
                        yield _sse(EventType.DONE, c.view(h, request))
                        return
                    chunk, last = progress_event(h["status"], json.loads(h["progress"]), preview, last)
                    if chunk:
                        yield chunk
                    h = preview = None
                try:
                    event = await asyncio.wait_for(events.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    yield b": keep-alive\n\n"
                    h = await c.jobs.get(job_id)
                    continue
                if event.get("type") == EventType.PROGRESS:
                    chunk, last = progress_event(event.get("status", JobStatus.RUNNING), event["progress"],
                                                 event.get("preview") if previews else None, last)
                    if chunk:
                        yield chunk
                else:  # done, or the event stream reconnected: read the job itself
                    h = await c.jobs.get(job_id)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
