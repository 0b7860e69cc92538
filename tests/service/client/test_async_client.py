"""`AsyncClient` against the real stack: the main paths of `Client`, awaited."""

from __future__ import annotations

import asyncio

import pytest
from PIL import Image

from service.client import AsyncClient, DoneEvent, JobCanceled, NotFoundError, ProgressEvent, ValidationError
from tests.service.client.conftest import TURBO


def run(stack, scenario):
    async def main():
        async with AsyncClient(stack.url) as fresco:
            return await scenario(fresco)

    return asyncio.run(main())


def test_generate_and_download(stack, tmp_path):
    async def scenario(fresco):
        job = await fresco.generate("turbo", **TURBO)
        return job, await fresco.download(job, tmp_path), await fresco.fetch(job.images[0].url)

    job, [path], data = run(stack, scenario)
    assert job.succeeded and path.name == f"{job.id}-0.png" and path.read_bytes() == data


def test_submit_get_wait_and_events(stack):
    async def scenario(fresco):
        job = await fresco.submit("sdxl", prompt="x", width=256, height=256, steps=6)
        events = [event async for event in fresco.events(job)]
        return job, await fresco.get(job.id), await fresco.wait(job), events

    job, read, waited, events = run(stack, scenario)
    assert read.id == job.id and waited.succeeded
    assert isinstance(events[-1], DoneEvent) and events[-1].job.id == job.id
    assert all(isinstance(e, ProgressEvent) for e in events[:-1]) and len(events) > 3


def test_img2img_from_a_pil_image_with_an_async_progress_callback(stack):
    seen = []

    async def on_progress(event):
        await asyncio.sleep(0)
        seen.append(event.progress.fraction)

    async def scenario(fresco):
        return await fresco.generate("img2img", prompt="x", image=Image.new("RGB", (80, 64), "red"), steps=4,
                                     on_progress=on_progress)

    job = run(stack, scenario)
    assert job.succeeded and (job.params["width"], job.params["height"]) == (80, 64) and seen


def test_cancel_and_errors(stack):
    async def scenario(fresco):
        job = await fresco.submit("svd", image=Image.new("RGB", (64, 64)), width=256, height=128, num_frames=14,
                                  steps=100)
        await fresco.cancel(job)
        ended = await fresco.wait(job)
        with pytest.raises(JobCanceled):
            ended.raise_for_status()
        with pytest.raises(ValidationError) as invalid:
            await fresco.submit("turbo", prompt="x", width=1001)
        with pytest.raises(NotFoundError):
            await fresco.get("00000000-0000-4000-8000-000000000000")
        return invalid.value, await fresco.health(), await fresco.ready(), await fresco.models()

    invalid, healthy, ready, models = run(stack, scenario)
    assert invalid.fields == [{"field": "width", "message": "must be a multiple of 8"}]
    assert healthy and ready and "turbo" in models["tasks"]


def test_train_list_and_delete_an_adapter(stack, tmp_path):
    from tests.service.client.test_train import QUICK, dataset, unique

    name, seen = unique("async"), []

    async def scenario(fresco):
        job = await fresco.train("tiny-sd", name, dataset(tmp_path / "set"), **QUICK)
        done = await fresco.follow(job, seen.append)
        listed = await fresco.adapters()
        await fresco.delete_adapter(name)
        with pytest.raises(NotFoundError):
            await fresco.delete_adapter(name)
        return job, done, listed, await fresco.adapters()

    job, done, listed, after = run(stack, scenario)
    assert job.task == "train" and done.succeeded and done.adapter.name == name and done.progress.loss > 0
    assert any(e.progress.loss is not None for e in seen)
    assert done.adapter.digest in [a.digest for a in listed if a.name == name]
    assert name not in [a.name for a in after]
