"""The API's side of Redis, on a server of its own: service/api/submit.py (input image stored, one
atomic enqueue, nothing left behind when it cannot be), service/api/access.py (read with ownership,
long-poll woken by events, cancel) and service/api/events.py (one pub/sub connection fanned out)."""

from __future__ import annotations

import asyncio
import base64
import io

import pytest
from PIL import Image

from service.api.access import JobAccess
from service.api.errors import Conflict, NotFound, Unavailable
from service.api.events import RECONNECT, EventHub
from service.api.inputs import decode_image
from service.api.resolve import Resolved
from service.api.submit import submit
from service.jobs import keys, protocol
from service.jobs.states import JobStatus
from service.redis import async_client
from service.settings import Settings
from service.storage import LocalStorage


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


def resolved(image: bool = False) -> Resolved:
    decoded = decode_image(base64.b64encode(png()).decode(), max_bytes=10**6, max_pixels=10**6) if image else None
    image = {"image": {"name": "input.png", "width": 64, "height": 64}} if decoded else {}
    params = {"prompt": "p", "seed": 1, **image}
    return Resolved(task="img2img" if image else "turbo", model="m", params=params,
                    images={"image": decoded} if decoded else {})


def run(module_server, tmp_path, body, **settings):
    """`body(redis, hub, storage, settings)` inside a running event loop with a started hub."""
    s = Settings(redis_url=module_server.url, data_dir=tmp_path, **settings)
    storage = LocalStorage(tmp_path / "results")

    async def main():
        redis = async_client(module_server.url)
        hub = EventHub(async_client(module_server.url, socket_timeout=None))
        hub.start()
        await asyncio.wait_for(hub.connected.wait(), 5)
        await redis.flushdb()
        try:
            return await body(redis, hub, storage, s)
        finally:
            await hub.stop()
            await redis.aclose()

    return asyncio.run(main())


def test_submit_stores_the_input_then_enqueues(module_server, tmp_path):
    async def body(redis, hub, storage, s):
        job_id = await submit(redis, storage, s, resolved(image=True), owner="alice")
        h = await JobAccess(redis, hub, 60).get(job_id, owner="alice")
        return job_id, h, storage.get(job_id, "input.png")

    job_id, h, data = run(module_server, tmp_path, body)
    assert h["status"] == "queued" and h["task"] == "img2img" and data == png()


def test_a_full_queue_is_503_and_leaves_no_file(module_server, tmp_path):
    async def body(redis, hub, storage, s):
        await submit(redis, storage, s, resolved(image=True), owner=None)
        with pytest.raises(Unavailable, match="img2img queue is full") as exc:
            await submit(redis, storage, s, resolved(image=True), owner=None)
        return exc.value, sorted(p.name for p in storage.root.iterdir())

    err, folders = run(module_server, tmp_path, body, queue_cap={"img2img": 1})
    assert err.headers == {"Retry-After": "10"} and len(folders) == 1  # the first job's input only


def test_redis_unreachable_at_submit_is_503_and_leaves_no_file(tmp_path):
    s = Settings(redis_url=f"unix://{tmp_path}/nothing.sock", data_dir=tmp_path)
    storage = LocalStorage(tmp_path / "results")

    async def main():
        redis = async_client(s.redis_url)
        try:
            with pytest.raises(Unavailable, match="unreachable"):
                await submit(redis, storage, s, resolved(image=True), owner=None)
        finally:
            await redis.aclose()

    asyncio.run(main())
    assert list(storage.root.iterdir()) == []


def test_another_keys_job_is_as_unknown_as_no_job(module_server, tmp_path):
    async def body(redis, hub, storage, s):
        jobs = JobAccess(redis, hub, 60)
        job_id = await submit(redis, storage, s, resolved(), owner="alice")
        assert (await jobs.get(job_id))["owner"] == "alice"  # keys off: no ownership check
        for owner, job in (("bob", job_id), ("alice", "not-a-uuid"), ("alice", "3f0c0000-0000-4000-8000-000000000000")):
            with pytest.raises(NotFound):
                await jobs.get(job, owner=owner)
        with pytest.raises(NotFound):
            await jobs.cancel(job_id, owner="bob")
        return True

    assert run(module_server, tmp_path, body)


def test_wait_wakes_when_the_job_ends_and_ignores_progress(module_server, tmp_path):
    async def body(redis, hub, storage, s):
        from service.redis import sync_client

        jobs = JobAccess(redis, hub, 60)
        job_id = await submit(redis, storage, s, resolved(), owner=None)
        sync = sync_client(module_server.url)

        def worker():
            protocol.start(job_id, "turbo", worker="w", progress={"step": 0}, at=protocol.now()).run(sync)
            protocol.report(job_id, {"step": 1}).run(sync)
            protocol.end(job_id, "turbo", JobStatus.SUCCEEDED, ttl=60, progress={"step": 2}).run(sync)

        loop = asyncio.get_running_loop()
        started = loop.time()
        waiting = asyncio.create_task(jobs.wait(job_id, 30))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(worker)
        h = await waiting
        return h["status"], loop.time() - started

    status, seconds = run(module_server, tmp_path, body)
    assert status == "succeeded" and seconds < 5  # woken by the done event, not by a re-check


def test_wait_gives_up_after_its_timeout(module_server, tmp_path):
    async def body(redis, hub, storage, s):
        jobs = JobAccess(redis, hub, 60)
        job_id = await submit(redis, storage, s, resolved(), owner=None)
        return (await jobs.wait(job_id, 0.3))["status"]

    assert run(module_server, tmp_path, body) == "queued"


def test_cancel_a_queued_job_then_again_is_409(module_server, tmp_path):
    async def body(redis, hub, storage, s):
        jobs = JobAccess(redis, hub, 60)
        job_id = await submit(redis, storage, s, resolved(), owner=None)
        h = await jobs.cancel(job_id)
        with pytest.raises(Conflict):
            await jobs.cancel(job_id)
        return h["status"], await redis.llen(keys.rq_queue("turbo", "m"))

    assert run(module_server, tmp_path, body) == ("canceled", 0)


def test_the_hub_fans_one_jobs_events_out_to_its_subscribers_only(module_server, tmp_path):
    async def body(redis, hub, storage, s):
        from service.redis import sync_client

        a, b = [await submit(redis, storage, s, resolved(), owner=None) for _ in range(2)]
        sync = sync_client(module_server.url)
        with hub.subscribe(a) as first, hub.subscribe(a) as second, hub.subscribe(b) as other:
            await asyncio.to_thread(lambda: protocol.cancel(a, "turbo", "m", ttl=60).run(sync))
            events = [await asyncio.wait_for(q.get(), 5) for q in (first, second)]
            hub._broadcast(RECONNECT)  # what a lost connection tells every waiter
            seen = other.get_nowait(), other.qsize()
        return events, seen, dict(hub._subs)

    events, (other, left), subs = run(module_server, tmp_path, body)
    assert events == [{"type": "done", "status": "canceled"}] * 2
    assert other == RECONNECT and left == 0  # b's subscriber saw nothing of a's
    assert subs == {}  # unsubscribed on leaving
